# Varnish peer of scripts/bench.sh: a synthetic "Hello World!" straight from the cache's
# front end (no backend), with the headers of the hello example.
vcl 4.1;

backend default none;

sub vcl_recv {
	return (synth(200));
}

sub vcl_synth {
	set resp.http.Content-Type = "text/plain";
	set resp.http.X-Powered-By = "edgevm";
	set resp.body = {"Hello World!
"};
	return (deliver);
}
