# Rootgate. `make demo` shows the whole story; `make test` runs the suite.
# Both install what they need (Debian packages, Go modules) when missing.

GO        ?= go
GOFLAGS   ?=
PKGS      := ./...
BIN       := bin/rootgate
FUZZTIME  ?= 30s
BENCHTIME ?= 3s
TEST_TIMEOUT ?= 14m

PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0

.PHONY: all deps build test vet fmt-check demo bench fuzz proto clean

all: build

deps:
	@./scripts/deps.sh

build: deps
	$(GO) build -o $(BIN) ./cmd/rootgate

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

test: deps fmt-check vet
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

demo: build
	./scripts/demo.sh

# Benchmarks: issuance path vs bare signing, journal, enrollment server CPU.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./ca/ ./hsm/ ./inventory/ ./enroll/
	$(GO) test -run '^$$' -bench EnrollFleet -benchtime 400x ./swtpm-tests/

# Runs every fuzz target for FUZZTIME each; corpora live in testdata/fuzz.
fuzz: deps
	@for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "fuzz $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# Regenerates api/ from the .proto files with pinned plugin versions.
proto: deps
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(CURDIR)/bin:$$PATH protoc -I api -I /usr/include \
	  --go_out=. --go_opt=module=github.com/rootgate/rootgate \
	  --go-grpc_out=. --go-grpc_opt=module=github.com/rootgate/rootgate \
	  api/rootgate/v1/*.proto

clean:
	rm -rf bin demo-data
