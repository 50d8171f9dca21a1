#!/bin/sh
# stat.sh PORT PROGRAM KEY: one number of /_edgevm/stats of the edgevm node on 127.0.0.1:PORT.
curl -sf "http://127.0.0.1:$1/_edgevm/stats" |
	awk -v p="\"$2\": {" -v k="\"$3\":" 'index($0, p) { f = 1 } f && index($0, k) { gsub(/[^0-9]/, ""); print; exit }'
