
ep1"	
sim-1"	
fleet	R
sim-1
{"fw":"1"}