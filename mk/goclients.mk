# The Go client fleet (tests/goclients): grpc-go clients like Teleport's agents, for the tests that
# compare them with the grpcio fleet. Built from the Go module proxy, cached by source hash.
TEST_PREREQS += goclients-build

.PHONY: goclients-build
goclients-build: venv ## build the grpc-go client fleet (cached by source hash; cold: about 2 min)
	@CACHE=$(CACHE) $(PY) -m tests.goclients.build
