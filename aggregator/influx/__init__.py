"""InfluxDB v1 HTTP API: line protocol encoder, InfluxQL quoting and an async client."""

from aggregator.influx.client import InfluxV1Client, Series
from aggregator.influx.errors import (
    InfluxAuthError,
    InfluxDatabaseNotFound,
    InfluxError,
    InfluxQueryError,
    InfluxRejected,
    InfluxUnavailable,
    LineProtocolError,
)
from aggregator.influx.influxql import quote_ident, quote_literal
from aggregator.influx.lineprotocol import Point, encode_point, encode_points, float_texts

__all__ = [
    "InfluxAuthError",
    "InfluxDatabaseNotFound",
    "InfluxError",
    "InfluxQueryError",
    "InfluxRejected",
    "InfluxUnavailable",
    "InfluxV1Client",
    "LineProtocolError",
    "Point",
    "Series",
    "encode_point",
    "encode_points",
    "float_texts",
    "quote_ident",
    "quote_literal",
]
