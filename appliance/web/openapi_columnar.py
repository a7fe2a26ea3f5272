"""The OpenAPI parts of the Arrow/Parquet answers (``columnar.py``): the
binary content types of ``/api/v1/historical/{symbol}`` and the bulk
endpoint ``/api/v1/bars``. ``openapi.py`` merges them into the document."""
from __future__ import annotations

from appliance.core import timeframes
from appliance.ops import arrowbars, arrowfiles

BINARY = {"type": "string", "format": "binary"}
COLUMNS_NOTE = ("Columns: symbol (dictionary-encoded), time (UTC timestamp of the bar's "
                "start, ms; the exchange time zone is exchange_timezone in the schema "
                "metadata), then as in the JSON answer, typed (prices float64, flags "
                "booleans). The request is in the metadata under 'appliance'.")

#: The 200 content types of the historical answer besides JSON and CSV.
HISTORICAL_CONTENT = {
    arrowbars.MIMETYPES["parquet"]: {"schema": {**BINARY, "description": "Parquet file. "
                                                + COLUMNS_NOTE}},
    arrowbars.MIMETYPES["arrow"]: {"schema": {**BINARY, "description": "Arrow IPC stream. "
                                              + COLUMNS_NOTE}},
}
FORMAT_DOC = ("json, csv, parquet or arrow (an Arrow IPC stream); without it, an Accept of "
              f"{arrowbars.MIMETYPES['parquet']} or {arrowbars.MIMETYPES['arrow']} chooses "
              "those. Parquet and Arrow pages carry the next page in a Link header.")


#: The fields of a too_many_rows error (413) besides code and message.
TOO_MANY_ROWS = {
    "max_rows": {"type": "integer", "description": "server.export.max_rows (too_many_rows only)."},
    "rows": {"type": "integer", "description": "Bars asked for (too_many_rows only)."},
    "fits": {"type": ["object", "null"], "description":
             "The first part of the request that fits one answer (too_many_rows only; null "
             "when a single day is over the limit).",
             "properties": {"start": {"type": "string", "format": "date"},
                            "end": {"type": "string", "format": "date"},
                            "rows": {"type": "integer"}},
             "required": ["start", "end", "rows"], "additionalProperties": False}}

def _q(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


#: The ``format`` parameter of the historical answer.
FORMAT_PARAM = _q("format", {"type": "string", "enum": ["json", "csv", "parquet", "arrow"],
                             "default": "json"}, FORMAT_DOC)


#: The ``compression`` parameter of every Parquet answer.
COMPRESSION_PARAM = _q("compression", {"type": "string", "enum": list(arrowfiles.COMPRESSIONS),
                                       "default": arrowfiles.ANSWER_COMPRESSION},
                       "The Parquet answer's compression: lz4 (fast to write and to read), "
                       "zstd (fewer bytes, for a slow link), snappy or none. Other formats "
                       "ignore it.")

#: The format parameters of the historical answer.
FORMAT_PARAMS = [FORMAT_PARAM, COMPRESSION_PARAM]


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


#: The adjustment parameters of every bars answer (historical and bulk).
ADJUST_PARAMS = [
    _q("adjust", {"type": "string", "enum": ["none", "splits", "total"], "default": "none"},
       "none: prices as traded. splits: prices times the split ratio of every later split, "
       "volume divided by it. total: splits, and prices times 1 - D / close_before_ex for "
       "every later cash dividend D (close_before_ex: the raw close of the session before "
       "the ex-date; an ex-date on a non-session applies from the next session); volume as "
       "for splits. Factors are compounded from the latest event backwards. The answer "
       "names adjust when the request does."),
    _q("adjusted", {"type": "boolean", "default": False},
       "The older form: true is adjust=splits, false adjust=none; given with adjust, they "
       "must agree (else 400 bad_adjust)."),
]


def paths(symbol_pattern: str, date_pattern: str) -> dict:
    sym = symbol_pattern.strip("^$")
    date = {"type": "string", "format": "date", "pattern": date_pattern}
    return {"/api/v1/bars": {"get": {
        "summary": "Bars of many symbols in one streamed answer (bulk export)",
        "description": "Sorted by symbol then time, sent row group by row group as read. "
                       "Needs the export scope (an API key with scopes [read, export]) or "
                       "the admin token. At most server.export.max_rows bars per answer "
                       "(413 beyond: ask for fewer symbols or a shorter range, as its fits says). "
                       + COLUMNS_NOTE,
        "security": [{"bearerAuth": []}],
        "parameters": [
            _q("symbols", {"type": "string", "pattern": f"^{sym}(,{sym})*$",
                           "maxLength": 2000},
               "Comma-separated symbols (or universe)."),
            _q("universe", {"type": "string", "enum": ["configured", "stored"]},
               "configured: every configured symbol; stored: every symbol with bars of the "
               "timeframe (or symbols)."),
            _q("as_of", date, "Only the symbols whose securities traded on this date (as "
               "/api/v1/universe lists them): the universe as it was, without survivorship "
               "bias."),
            _q("timeframe", {"type": "string", "enum": list(timeframes.ALL), "default": "1d"},
               "As for /api/v1/historical."),
            _q("start", date, "First session (inclusive); default one year before end."),
            _q("end", date, "Last session (inclusive); default today (New York)."),
            _q("format", {"type": "string", "enum": ["parquet", "arrow", "csv"],
                          "default": "parquet"}, "parquet, arrow (IPC stream) or csv."),
            COMPRESSION_PARAM,
            *ADJUST_PARAMS,
            _q("include_invalid", {"type": "boolean", "default": False},
               "Also bars that failed validation."),
        ],
        "responses": {
            "200": {"description": "The bars.", "content": {
                arrowbars.MIMETYPES["parquet"]: {"schema": BINARY},
                arrowbars.MIMETYPES["arrow"]: {"schema": BINARY},
                "text/csv": {"schema": {"type": "string"}}}},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": _error("No credential: bulk export needs a Bearer token with the export "
                          "scope."),
            "403": _error("The credential has no export scope."),
            "413": _error("More bars than server.export.max_rows; the error has max_rows, "
                          "rows and fits (the first part of the request that fits one "
                          "answer), and says how to page."),
            "429": {"$ref": "#/components/responses/TooManyRequests"},
            "503": {"$ref": "#/components/responses/Unavailable"},
        }}}}
