module edgevm.local/guest

go 1.19
