"""The benchmark behind `make bench`: a load generator speaking APISIX's side of the protocol."""
