// Package bench is keymesh's test and measurement harness: load,
// propagation, peer-comparison and limits runs against real origins and
// edges, and the mock OpenAI-compatible upstream they send traffic to.
//
// The mock upstream ([Upstream]) stands in for an inference server such as
// vLLM, both in `make run` and in tests. It answers GET /v1/models,
// POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings and
// GET /health with OpenAI-shaped JSON and deterministic content. A chat or
// completion request with "stream": true is answered as text/event-stream:
// [UpstreamConfig.StreamChunks] chunks, each written and flushed
// [UpstreamConfig.ChunkInterval] after the one before (a request may
// override the pace with the X-Mock-Chunk-Interval header), then — only
// when the request asked with "stream_options": {"include_usage": true},
// as vLLM and OpenAI do — a usage-only chunk ("choices": [] and "usage"),
// then "data: [DONE]". Every non-streamed answer reports its usage. A stream stops as soon as the client goes away. Every
// request is shown to [UpstreamConfig.OnRequest] before it is answered, so a
// test can assert exactly what a proxy forwarded, and [Upstream.Stats]
// counts requests in flight and streams finished or abandoned, so a test can
// see that a handler ended without sleeping.
//
// The fair comparison ([RunFair], `bench compare`) measures what a proxy
// costs rather than what a slow backend lets it show: the proxies (the
// raw Go proxy [RawProxy] — bytes relayed by their framing, the least any
// Go proxy costs —, the bare fasthttp proxy, an edge, nginx with a static
// key map, nginx with Debian's per-request access log) stand in front of
// a backend several times faster than any of them (backend/backend.c,
// built with cc by [BuildBackend]; [FixedBackend] where no compiler is),
// backend and proxy
// pinned to one CPU with GOMAXPROCS=1 or one nginx worker, the load
// generator (wrk, [RunWrk]) on another; targets take turns, every figure
// is a median of rounds, and each proxy's CPU per request is read from
// /proc ([ProcCPU]). Its report states which generator and backend ran and
// what was pinned, so a run on one core, without wrk or without a C
// compiler says so instead of passing for a fair one.
//
// For the WAN bench (`bench wan`) on kernels without tc netem, [DelayRelay]
// (TCP, with a cut switch) and [DelayUDP] delay every chunk or datagram by
// a fixed one-way delay per direction, in order, counted from when it was
// read (a burst is not delayed once per chunk); [InNetns], [ListenIn] and
// [DialIn] make sockets inside a named network namespace from one process.
package bench
