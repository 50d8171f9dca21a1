# edgevm.vcl: Varnish 7.1 (Debian 12's varnish package) in front of one or more edgevm nodes.
#
#   varnishd -a :80 -p vcl_path=/etc/varnish -f /etc/varnish/edgevm.vcl
#
# with edgevm-nodes.vcl (the nodes, the directors they join, and per-site routing: see the
# example next to this file) in the same directory. docs/DEPLOY.md explains each part; the
# varnishtest files in crates/edgevm/tests/varnish/ run it against real edgevm nodes.
#
# What it does:
# - probes every node on GET /_edgevm/health (200 = ready; 503 while booting, when a
#   "start": true program failed, and from SIGTERM on while the node drains);
# - spreads requests round-robin, or with the shard director by a key when a program's
#   storage-VM state must stay on one node (set req.http.X-Edgevm-Shard in edgevm_route);
# - retries idempotent requests (GET/HEAD) on another node when a node cannot be reached or
#   answers 503 (twice at most);
# - passes a program's arg in X-Edgevm-Arg (edgevm's trusted_frontends must list Varnish's
#   address, or "unix" for a Unix-socket backend); a client's own X-Edgevm-Arg is dropped;
# - caches exactly what the program asked for: set_cacheable() / BackendResponseExtra give
#   "Cache-Control: public, max-age=TTL[, stale-while-revalidate=GRACE]", which Varnish turns
#   into beresp.ttl and beresp.grace; anything else is not cached.
vcl 4.1;

import directors;

probe edgevm_health {
	.request =
		"GET /_edgevm/health HTTP/1.1"
		"Host: edgevm"
		"User-Agent: varnish-probe"
		"Connection: close";
	.expected_response = 200;
	.interval = 1s;
	.timeout = 2s;
	# Sick after 2 failed probes of the last 3; healthy again after 2 good ones.
	.window = 3;
	.threshold = 2;
	.initial = 2;
}

sub vcl_init {
	new rr = directors.round_robin();
	new by_key = directors.shard();
	call edgevm_backends;
	by_key.reconfigure();
}

# The nodes: backends using probe edgevm_health, `sub edgevm_backends` adding each to the
# directors `rr` and `by_key`, and `sub edgevm_route` (arg and shard key per route).
include "edgevm-nodes.vcl";

sub vcl_recv {
	# Only Varnish decides a program's arg and shard key.
	unset req.http.X-Edgevm-Arg;
	unset req.http.X-Edgevm-Shard;
	# Admin endpoints (stats, metrics, live update, health) are per node: ask the node.
	if (req.url ~ "^/(_edgevm|metrics)([/?]|$)") {
		return (synth(404, "admin endpoints are per node"));
	}
	call edgevm_route;
	if (req.method != "GET" && req.method != "HEAD") {
		# Program input (POST bodies) is never cached, and not retried (not idempotent).
		return (pass);
	}
	# Cookies and Authorization do not stop caching here: a program decides with
	# set_cacheable(); the hash includes the URL only (and X-Edgevm-Shard's key, if any).
	return (hash);
}

sub vcl_hash {
	if (req.http.X-Edgevm-Arg) {
		hash_data(req.http.X-Edgevm-Arg);
	}
}

sub vcl_backend_fetch {
	if (bereq.http.X-Edgevm-Shard) {
		# The same key goes to the same node while it is healthy; a retry (or a sick node)
		# takes the next one on the ring.
		set bereq.backend = by_key.backend(by=KEY,
			key=by_key.key(bereq.http.X-Edgevm-Shard), alt=bereq.retries);
	} else {
		set bereq.backend = rr.backend();
	}
}

sub vcl_backend_response {
	if (beresp.status == 503 && bereq.retries < 2 && bereq.method ~ "^(GET|HEAD)$") {
		# The node is booting, draining, or its queue is full: try another.
		return (retry);
	}
	if (beresp.http.Cache-Control !~ "(^|[ ,])public([ ,]|$)" || beresp.status >= 500) {
		# The program did not ask to be cached (or failed): never cached, and not
		# remembered as uncacheable for long (hit-for-miss for 10 s).
		set beresp.ttl = 10s;
		set beresp.uncacheable = true;
		return (deliver);
	}
	# Cache-Control max-age and stale-while-revalidate became ttl and grace already.
	return (deliver);
}

sub vcl_backend_error {
	if (bereq.retries < 2 && bereq.method ~ "^(GET|HEAD)$") {
		# Could not connect or read a response: another node.
		return (retry);
	}
}
