
ep1€ ñÂ±4"
fleetopsbfleet"opsB{"a":1}bn1