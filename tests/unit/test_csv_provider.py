import datetime as dt

import numpy as np
import pytest

from appliance.core.candles import Split
from appliance.core.errors import ProviderDataError
from appliance.providers import make_provider
from appliance.providers.csvdir import CsvProvider


def write(path, text):
    path.write_text(text)
    return path


def test_it_reads_a_symbol_file_within_the_range(tmp_path):
    write(tmp_path / "AAPL.csv", "Date,Open,High,Low,Close,Volume\n"
          "2024-06-18,212.5,214.0,210.1,213.07,1000\n"
          "2024-06-14,210.0,212.0,209.0,211.5,900\n"
          "2024-06-20,213.0,215.0,212.0,214.29,1100\n")
    b = CsvProvider(str(tmp_path)).daily_bars("AAPL", dt.date(2024, 6, 14), dt.date(2024, 6, 18))
    assert b.session.astype(dt.date).tolist() == [dt.date(2024, 6, 14), dt.date(2024, 6, 18)]
    assert b.close.tolist() == [211.5, 213.07] and b.volume.tolist() == [900.0, 1000.0]
    assert np.isnan(b.vwap).all() and (b.trades == -1).all()
    assert b.source == "csv"


def test_optional_vwap_and_trades_columns_in_any_order(tmp_path):
    write(tmp_path / "MSFT.csv", "date,close,open,high,low,volume,trades,vwap\n"
          "2024-06-18,10.5,10,11,9.5,100,7,10.2\n")
    b = CsvProvider(str(tmp_path)).daily_bars("MSFT", dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert (b.open[0], b.high[0], b.low[0], b.close[0]) == (10.0, 11.0, 9.5, 10.5)
    assert b.vwap[0] == 10.2 and b.trades[0] == 7


def test_an_empty_value_is_kept_as_missing(tmp_path):
    write(tmp_path / "X.csv", "Date,Open,High,Low,Close,Volume\n2024-06-18,1,2,0.5,,10\n")
    b = CsvProvider(str(tmp_path)).daily_bars("X", dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert np.isnan(b.close[0])


@pytest.mark.parametrize("line", ["2024-06-18,1,2,abc,1.5,10", "2024-13-01,1,2,0.5,1.5,10",
                                  "2024-06-18,1,2,0.5,1.5"])
def test_a_malformed_line_names_the_file_and_line(tmp_path, line):
    f = write(tmp_path / "BAD.csv", "Date,Open,High,Low,Close,Volume\n"
              "2024-06-17,1,2,0.5,1.5,10\n" + line + "\n")
    with pytest.raises(ProviderDataError) as e:
        CsvProvider(str(tmp_path)).daily_bars("BAD", dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert f"{f}:3" in str(e.value)


def test_a_header_without_the_required_columns_is_a_data_error(tmp_path):
    f = write(tmp_path / "H.csv", "Date,Open,High,Close\n2024-06-17,1,2,1.5\n")
    with pytest.raises(ProviderDataError) as e:
        CsvProvider(str(tmp_path)).daily_bars("H", dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert f"{f}:1" in str(e.value) and "low" in str(e.value)


def test_a_missing_file_is_no_data(tmp_path):
    b = CsvProvider(str(tmp_path)).daily_bars("NONE", dt.date(2024, 1, 1), dt.date(2024, 12, 31))
    assert len(b) == 0


def test_splits_come_from_splits_csv_or_are_empty(tmp_path):
    p = CsvProvider(str(tmp_path))
    assert p.splits("AAPL") == []
    write(tmp_path / "splits.csv", "Symbol,Date,From,To\nAAPL,2020-08-31,1,4\n"
          "NVDA,2024-06-10,1,10\nAAPL,2014-06-09,1,7\nAAPL,2020-08-31,1,4\n")
    assert p.splits("AAPL") == [Split("AAPL", dt.date(2014, 6, 9), 1.0, 7.0),
                                Split("AAPL", dt.date(2020, 8, 31), 1.0, 4.0)]
    assert p.splits("AAPL", start=dt.date(2015, 1, 1)) == [Split("AAPL", dt.date(2020, 8, 31), 1, 4)]


def test_make_provider_builds_the_csv_provider(tmp_path):
    p = make_provider({"name": "csv", "csv": {"path": str(tmp_path)}})
    assert p.name == "csv" and p.supports_grouped is False
