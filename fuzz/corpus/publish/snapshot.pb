
B$[{"c":"c1","s":"fleet","g":["ops"]}]bn1