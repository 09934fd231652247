"""The server's Prometheus metrics: requests by route and status, a latency histogram, and per model
its queue, dynamic batches and the continuous-batching scheduler's counters."""

from __future__ import annotations

import threading

from pressa.serve.models import TensorModel, TextGenerator

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Stats:
    def __init__(self, replica: str | None = None):
        self.replica = replica
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.hist = [0] * (len(BUCKETS) + 1)
        self.total, self.count = 0.0, 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            self.hist[next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
            self.total += seconds
            self.count += 1

    def text(self, models: dict) -> str:
        out = ["# TYPE pressa_requests_total counter"]
        out += [f'pressa_requests_total{{route="{r}",code="{c}"}} {n}' for (r, c), n in sorted(self.requests.items())]
        if self.replica is not None:           # Ray Serve: which replica answered, and how much it served
            served = sum(n for (r, _), n in self.requests.items() if r != "/metrics")
            out += ["# TYPE pressa_replica_requests_total counter",
                    f'pressa_replica_requests_total{{replica="{self.replica}"}} {served}']
        out.append("# TYPE pressa_request_seconds histogram")
        acc = 0
        for b, n in zip((*BUCKETS, "+Inf"), self.hist):
            acc += n
            out.append(f'pressa_request_seconds_bucket{{le="{b}"}} {acc}')
        out += [f"pressa_request_seconds_sum {self.total:.6f}", f"pressa_request_seconds_count {self.count}",
                "# TYPE pressa_queue_depth gauge"]
        out += [f'pressa_queue_depth{{model="{m.name}"}} {m.depth}' for m in models.values()]
        out.append("# TYPE pressa_batch_rows_total counter")
        out += [f'pressa_batch_rows_total{{model="{m.name}"}} {sum(m.batcher.sizes)}' for m in models.values()
                if isinstance(m, TensorModel) and m.batcher]
        gens = [m for m in models.values() if isinstance(m, TextGenerator)]
        for metric, kind, attr in (("generated_tokens_total", "counter", "generated"),
                                   ("running_sequences", "gauge", "active"),
                                   ("decode_steps_total", "counter", "steps"),
                                   ("decode_step_rows_total", "counter", "step_rows"),
                                   ("cancelled_sequences_total", "counter", "cancelled"),
                                   ("speculative_drafted_tokens_total", "counter", "drafted"),
                                   ("speculative_accepted_tokens_total", "counter", "accepted")):
            out.append(f"# TYPE pressa_{metric} {kind}")
            out += [f'pressa_{metric}{{model="{m.name}"}} {getattr(m.scheduler, attr)}' for m in gens]
        for metric, kind, attr in (("prefix_cache_hit_tokens_total", "counter", "hit_tokens"),
                                   ("prefix_cache_prompt_tokens_total", "counter", "prompt_tokens"),
                                   ("prefix_cache_bytes", "gauge", "bytes"),
                                   ("prefix_cache_evicted_blocks_total", "counter", "evicted")):
            out.append(f"# TYPE pressa_{metric} {kind}")
            out += [f'pressa_{metric}{{model="{m.name}"}} {getattr(m.model.prefix_cache, attr)}' for m in gens
                    if m.model.prefix_cache is not None]
        out.append("# TYPE pressa_grammar_mask_seconds summary")      # structured output's cost per token
        for m in gens:
            g = m.model.__dict__.get("grammar")          # built at a model's first constrained request
            tokens, seconds = (g.stats.tokens, g.stats.seconds) if g else (0, 0.0)
            out += [f'pressa_grammar_mask_seconds_sum{{model="{m.name}"}} {seconds:.6f}',
                    f'pressa_grammar_mask_seconds_count{{model="{m.name}"}} {tokens}']
        out.append("# TYPE pressa_time_to_first_token_seconds summary")
        for m in gens:
            out += [f'pressa_time_to_first_token_seconds_sum{{model="{m.name}"}} {m.scheduler.first_token_seconds:.6f}',
                    f'pressa_time_to_first_token_seconds_count{{model="{m.name}"}} {m.scheduler.first_tokens}']
        return "\n".join(out) + "\n"
