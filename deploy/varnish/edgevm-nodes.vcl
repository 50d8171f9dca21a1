# edgevm-nodes.vcl: the edgevm nodes behind edgevm.vcl (an example: three nodes on this
# machine, ports 8081-8083; replace with your nodes). Each backend uses the probe
# edgevm_health; each is added to both directors in edgevm_backends.

backend node1 { .host = "127.0.0.1"; .port = "8081"; .probe = edgevm_health; }
backend node2 { .host = "127.0.0.1"; .port = "8082"; .probe = edgevm_health; }
backend node3 { .host = "127.0.0.1"; .port = "8083"; .probe = edgevm_health; }
# A node on this machine reached over a Unix socket (edgevm --listen unix:/run/edgevm/edgevm.sock
# --listen-mode 0660 --listen-owner edgevm:varnish):
#   backend local { .path = "/run/edgevm/edgevm.sock"; .probe = edgevm_health; }

sub edgevm_backends {
	rr.add_backend(node1);
	rr.add_backend(node2);
	rr.add_backend(node3);
	by_key.add_backend(node1);
	by_key.add_backend(node2);
	by_key.add_backend(node3);
}

# Per-route decisions, the VCL side of the reference's program(name, url, arg):
# - req.http.X-Edgevm-Arg: the program's arg (edgevm must list Varnish in trusted_frontends);
# - req.http.X-Edgevm-Shard: a key; requests with the same key go to the same node (for
#   programs whose storage VM keeps state). Without it, round-robin.
sub edgevm_route {
	if (req.url ~ "^/thumbs([/?]|$)") {
		set req.http.X-Edgevm-Arg = {"{"width": 128}"};
	}
	if (req.url ~ "^/counter([/?]|$)") {
		set req.http.X-Edgevm-Shard = "counter";
	}
}
