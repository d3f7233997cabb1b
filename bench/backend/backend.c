/*
 * keymesh bench backend: the fastest inference server a proxy can be put in
 * front of. One thread, epoll, HTTP/1.1 keep-alive (pipelining too): every
 * request, whatever its method or path, gets the same non-streamed chat
 * completion (with usage, as vLLM answers). It exists so that `bench
 * compare` measures the proxies and not the server behind them: it costs a
 * few microseconds per request, several times less than any proxy.
 *
 * Built by the bench (bench.BuildBackend, `cc -O2`) from this file, which is
 * embedded in the bench binary; a Go fasthttp twin (bench.FixedBackend)
 * stands in where no C compiler is.
 *
 * usage: backend PORT   (listens on 127.0.0.1:PORT; SIGTERM ends it)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BODY                                                                                                \
	"{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1764633600,\"model\":\"mock-model\"," \
	"\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello! This is a mock "     \
	"answer.\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],"                                               \
	"\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":7,\"total_tokens\":11}}"

#define INBUF (64 * 1024)
#define OUTBUF (64 * 1024)

struct conn {
	int fd, armed;
	size_t in, out, sent;
	char ibuf[INBUF];
	char obuf[OUTBUF];
};

static char resp[512];
static size_t resp_len;

static const char too_large[] = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/* content_length returns the request's Content-Length (0 without one), or
 * -1 for a body this server does not read (chunked). */
static long content_length(const char *h, size_t n) {
	long cl = 0;
	const char *end = h + n;
	for (const char *p = h; p < end;) {
		const char *eol = memchr(p, '\n', end - p);
		if (!eol)
			break;
		size_t len = eol - p;
		if (len > 15 && strncasecmp(p, "content-length:", 15) == 0)
			cl = strtol(p + 15, NULL, 10);
		else if (len > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0)
			return -1;
		p = eol + 1;
	}
	return cl;
}

static void drop(int ep, struct conn *c) {
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

/* flush writes what is pending: 0 when all of it went, 1 when the socket
 * is full (then it waits for EPOLLOUT alone, reading nothing more until
 * it drains), -1 on error. */
static int flush(int ep, struct conn *c) {
	while (c->sent < c->out) {
		ssize_t w = write(c->fd, c->obuf + c->sent, c->out - c->sent);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				if (!c->armed) {
					struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c}; /* reads wait */
					epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
					c->armed = 1;
				}
				return 1;
			}
			return -1;
		}
		c->sent += w;
	}
	c->out = c->sent = 0;
	if (c->armed) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
		c->armed = 0;
	}
	return 0;
}

/* serve answers every whole request in the input buffer; -1 closes. */
static int serve(struct conn *c) {
	size_t off = 0;
	for (;;) {
		char *start = c->ibuf + off;
		size_t avail = c->in - off;
		char *hend = memmem(start, avail, "\r\n\r\n", 4);
		if (!hend)
			break;
		size_t hlen = hend + 4 - start;
		long cl = content_length(start, hlen);
		if (cl < 0 || (size_t)cl > INBUF - hlen)
			return -1;
		if (avail < hlen + (size_t)cl)
			break;
		if (c->out + resp_len > OUTBUF)
			break; /* answer the rest once this is written */
		memcpy(c->obuf + c->out, resp, resp_len);
		c->out += resp_len;
		off += hlen + cl;
	}
	if (off > 0) {
		memmove(c->ibuf, c->ibuf + off, c->in - off);
		c->in -= off;
	}
	if (c->in == INBUF && c->out == 0) { /* one request larger than the buffer */
		(void)!write(c->fd, too_large, sizeof too_large - 1);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: %s PORT\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	resp_len = snprintf(resp, sizeof resp,
	                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
	                    strlen(BODY), BODY);
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
	                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
		perror("backend: listen");
		return 1;
	}
	int ep = epoll_create1(0);
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (!c) {
				int fd;
				while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					struct conn *nc = malloc(sizeof *nc);
					if (!nc) {
						close(fd);
						continue;
					}
					nc->fd = fd;
					nc->in = nc->out = nc->sent = 0;
					nc->armed = 0;
					struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
				}
				continue;
			}
			int bad = 0;
			if (!c->armed && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
				/* Level-triggered: one read per wake-up, epoll calls again
				 * while more is there. */
				ssize_t r = read(c->fd, c->ibuf + c->in, INBUF - c->in);
				if (r > 0)
					c->in += r;
				else if (r == 0 || (errno != EAGAIN && errno != EINTR))
					bad = 1;
			}
			/* Answer what is whole (again after a full socket drained), in
			 * one write where it fits. */
			while (!bad && c->out == 0 && c->in > 0) {
				size_t before = c->in;
				if (serve(c) < 0 || flush(ep, c) < 0)
					bad = 1;
				if (c->in == before)
					break; /* nothing whole yet */
			}
			if (!bad && c->out > 0 && flush(ep, c) < 0)
				bad = 1;
			if (!bad && c->armed && (evs[i].events & (EPOLLHUP | EPOLLERR)))
				bad = 1;
			if (bad)
				drop(ep, c);
		}
	}
}
