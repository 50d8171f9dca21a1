// event_loop.cpp: an event-loop program in C++ (std::string, a class holding state across
// requests of a non-ephemeral VM), tests/all/event_loop.rs.
#include "kvm_api.h"
#include <string>
#include <vector>

class Loop {
public:
	void serve(const kvm_request &req)
	{
		seen_.emplace_back(req.url, req.url_len);
		std::string out = "C++ loop url=" + seen_.back() + " seen=" + std::to_string(seen_.size());
		backend_response(200, "text/plain", 10, out.data(), out.size());
	}

private:
	std::vector<std::string> seen_;
};

int main()
{
	Loop loop;
	for (;;) {
		kvm_request req{};
		wait_for_requests_paused(&req);
		loop.serve(req);
	}
}
