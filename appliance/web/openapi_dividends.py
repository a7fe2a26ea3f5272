"""The OpenAPI parts of ``GET /api/v1/dividends/{symbol}`` and
``GET /api/v1/universe`` (``corpactions.py``). ``openapi.py`` merges them
into the document."""
from __future__ import annotations

_NUM_OR_NULL = {"type": ["number", "null"]}
_DATE = {"type": "string", "format": "date"}
_DATE_OR_NULL = {"type": ["string", "null"], "format": "date"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_DIVIDEND_PROPS = {
    "ex_dividend_date": _DATE,
    "dividend_type": {"type": "string", "enum": ["CD", "SC", "LT", "ST"],
                      "description": "CD regular cash, SC special cash, LT/ST long- and "
                                     "short-term capital gains."},
    "cash_amount": _NUM_OR_NULL, "currency": {"type": ["string", "null"]},
    "declaration_date": _DATE_OR_NULL, "record_date": _DATE_OR_NULL, "pay_date": _DATE_OR_NULL,
    "frequency": {"type": ["integer", "null"]},
    "close_before": {**_NUM_OR_NULL, "description": "Raw close of the last valid daily bar "
                                                   "before the ex-date."},
    "factor": {**_NUM_OR_NULL, "description": "1 - cash_amount / close_before, what it "
                                              "contributes to adjust=total; null when not "
                                              "applied."},
    "applied": {"type": "boolean"},
    "problem": {"type": ["string", "null"], "description": "Why it is not applied."},
    "source": {"type": "string"}}

#: The ``tickers`` head field of a bars answer of a renamed security.
TICKERS = {"type": "array", "description": "Only for a security that had more than one "
           "ticker: the ticker in force from each date (to: exclusive, null: still).",
           "items": {"type": "object", "required": ["ticker", "from", "to"],
                     "additionalProperties": False,
                     "properties": {"ticker": {"type": "string"}, "from": _DATE,
                                    "to": _DATE_OR_NULL}}}

_MEMBER_PROPS = {
    "symbol": {"type": "string", "description": "The symbol its bars are stored under."},
    "ticker": {"type": "string", "description": "Its ticker on as_of."},
    "composite_figi": {"type": ["string", "null"]}, "name": {"type": ["string", "null"]},
    "ticker_since": _DATE_OR_NULL, "delisted_on": _DATE_OR_NULL,
    "basis": {"type": "string", "enum": ["reference", "stored_bars"],
              "description": "reference: the vendor's listings, ticker changes and "
                             "delistings; stored_bars: no ticker history, the span of its "
                             "stored daily bars."}}

SCHEMAS = {
    "UniverseMember": {"type": "object", "properties": _MEMBER_PROPS,
                       "required": list(_MEMBER_PROPS), "additionalProperties": False},
    "Universe": {"type": "object",
                 "properties": {"as_of": _DATE, "count": {"type": "integer"},
                                "securities": {"type": "array",
                                               "items": _ref("UniverseMember")}},
                 "required": ["as_of", "count", "securities"], "additionalProperties": False},
    "Dividend": {"type": "object", "properties": _DIVIDEND_PROPS,
                 "required": list(_DIVIDEND_PROPS), "additionalProperties": False},
    "DividendList": {"type": "object",
                     "properties": {"symbol": {"type": "string"}, "count": {"type": "integer"},
                                    "dividends": {"type": "array", "items": _ref("Dividend")}},
                     "required": ["symbol", "count", "dividends"],
                     "additionalProperties": False},
}


def paths(read, symbol_pattern: str, date_pattern: str) -> dict:
    """``read``: openapi's builder of a read operation (security, errors)."""
    def date(name: str, description: str) -> dict:
        return {"name": name, "in": "query", "required": False, "description": description,
                "schema": {"type": "string", "format": "date", "pattern": date_pattern}}
    symbol = {"name": "symbol", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": symbol_pattern, "maxLength": 15},
              "description": "Ticker, e.g. KO.", "example": "AAPL"}
    ok = {"description": "Dividends, oldest first, each with the factor it contributes to "
                         "adjust=total.",
          "content": {"application/json": {"schema": _ref("DividendList")}}}
    return {"/api/v1/dividends/{symbol}": {"get": read(
        "A symbol's stored cash dividends, oldest first", ok,
        [symbol, date("start", "Ex-dates on or after this date."),
         date("end", "Ex-dates on or before this date.")],
        errors=("400", "401", "404", "503"))},
        "/api/v1/universe": {"get": read(
            "The securities that traded on a date, with the ticker each had",
            {"description": "By symbol.",
             "content": {"application/json": {"schema": _ref("Universe")}}},
            [date("as_of", "The date; default today (New York).")])}}
