// hello.cpp: C++ runtime check (static libstdc++, iostream, exceptions).
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

static int thrower(int x)
{
	if (x > 2)
		throw std::runtime_error("value " + std::to_string(x) + " too large");
	return x * 2;
}

int main(int argc, char **argv)
{
	std::string greeting = "Hello World from C++!";
	std::cout << greeting << std::endl;
	std::vector<std::string> args(argv, argv + argc);
	std::cout << "argc=" << args.size() << std::endl;
	try {
		thrower(1);
		thrower(3);
		std::cout << "FAIL no exception" << std::endl;
		return 1;
	} catch (const std::exception &e) {
		std::cout << "caught: " << e.what() << std::endl;
	}
	return 0;
}
