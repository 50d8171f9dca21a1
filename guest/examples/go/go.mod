module edgevm.local/goserve

go 1.19

require edgevm.local/guest v0.0.0

replace edgevm.local/guest => ../../go
