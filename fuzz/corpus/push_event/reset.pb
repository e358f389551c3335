
ep2j"gone