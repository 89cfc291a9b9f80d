#!/usr/bin/env python3
"""ztrace's userspace CPU by pipeline stage, from `perf script -F comm,ip,sym` of a
`perf record --call-graph dwarf` of the daemon (see stages.sh).

Each sample goes to the stage of the innermost frame of its call chain that names one (so
`memmove` called by the HTTP/1 parser counts as parsing). Usage: stages.py SCRIPT_OUTPUT
[NS_PER_REQUEST] — with the second argument, each share is also shown in ns per request."""
import collections
import re
import sys

# Checked per frame, innermost first; within a frame, in this order.
STAGES = [
    ("capture: ring buffer read, record decode", r"aya::maps::ring_buf|RingBuf|^drain \(inlined\)|decode|live::run_async"),
    ("capture: protocol parsing", r"^<?ztrace_protocols::|^push_steps<|AnyParser as"),
    ("capture: linking (tables, settling)", r"ztrace::link::|Linker|ServerSeqs"),
    ("capture: assembling exchanges into spans", r"assemble::|assembler"),
    ("capture: metrics", r"signals::metrics|IoBytes"),
    ("capture: connection table", r"conntrack::"),
    ("capture: processors, hand-off to export", r"Pipeline::released|ExportHandle|submit_all|processors::"),
    ("capture: pipeline glue", r"Pipeline::on_record|Pipeline::poll|runtime::pipeline"),
    ("export: OTLP encoding", r"export::wire|encode_request|visit_attributes|semconv::"),
    ("export: batching", r"export::worker|Worker::"),
    ("export: HTTP/gRPC client", r"hyper|h2::|tonic|tower|export::transport|export::otlp"),
    ("export: kernel TCP send", r"tcp_|sock_|sendto|sendmsg|sys_write|writev|copy_from_iter|ip_|skb"),
    ("runtime: wake-ups, scheduling, timers", r"futex|schedule|finish_task_switch|park|epoll|tokio::runtime"),
]
RULES = [(name, re.compile(rx)) for name, rx in STAGES]


def stage(frames):
    for f in frames:
        for name, rx in RULES:
            if rx.search(f):
                return name
    return "other: " + (frames[0][:50] if frames else "?")


def main():
    counts = collections.Counter()
    frames = []

    def flush():
        if frames:
            counts[stage(frames)] += 1

    for line in open(sys.argv[1], errors="replace"):
        if line.startswith("\t"):
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1])
        elif line.strip():
            flush()
            frames = []
    flush()
    total = sum(counts.values())
    ns = float(sys.argv[2]) * 1000 if len(sys.argv) > 2 else None
    print(f"| stage | share of {total} samples |" + (" ns per request |" if ns else ""))
    print("|---|---|" + ("---|" if ns else ""))
    for name, n in counts.most_common():
        share = n / total
        print(f"| {name} | {share * 100:.1f} % |" + (f" {share * ns:.0f} |" if ns else ""))


if __name__ == "__main__":
    main()
