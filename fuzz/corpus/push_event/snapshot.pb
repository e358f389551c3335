
ep1b+
B#[{"c":"x","s":"fleet","g":["ops"]}]bn2