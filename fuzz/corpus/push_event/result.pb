
ep1"	
fleet
Z*
csim-1R
t21.5C"×h’fuzzšc1