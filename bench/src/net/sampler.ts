/**
 * Where a Shoal wave's time goes, node by node: while the nodes pull, every agent's and the
 * seed server's counters are read at a fixed interval (over the lab's unshaped control link),
 * with the whole machine's CPU from `/proc/stat`. From those samples: when each node got its
 * first bytes, how long it sat with nothing arriving, how fast it fetched against its link,
 * what it got from the seed and from peers, what it uploaded, and how busy the seed's link
 * (the one every byte must cross once) was. Counters, not spans: reading them costs each agent
 * one /metrics answer a second, whatever the piece count.
 */
import { readFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';

import { scrapeMetrics } from '@shoal/testkit';

import { quantile } from '../sim/stats.js';

/** How often the counters are read, in ms. */
export const SAMPLE_INTERVAL_MS = 1000;
/** A metrics read's longest wait, in ms: a loaded agent may answer slowly, never a sample lost. */
const SCRAPE_TIMEOUT_MS = 5000;

/** One agent's counters at one moment. */
export interface AgentCounters {
  readonly origin: number;
  readonly seed: number;
  readonly peer: number;
  readonly uploaded: number;
  /** Piece requests the seed turned away (its fan-out rationing), and failed ones. */
  readonly deferred: number;
  readonly failed: number;
  /** Blob bytes the agent has sent its containerd (`shoal_agent_served_bytes_total`). */
  readonly toClient: number;
}

/** Every counter at one moment, since the wave's start. */
export interface Sample {
  readonly atMs: number;
  /** Per node, in the order of the wave's nodes; undefined when a read failed. */
  readonly agents: readonly (AgentCounters | undefined)[];
  /** Bytes the seed server has sent; undefined when its read failed. */
  readonly seedServed: number | undefined;
  /** Bytes the seed server has taken in (from the origin or its store); undefined likewise. */
  readonly seedIngested?: number | undefined;
  /** The machine's CPU time (all cores) busy since the previous sample, in s, and elapsed. */
  readonly busyS: number;
  readonly totalS: number;
}

export interface SampledAgent {
  readonly name: string;
  readonly url: string;
}

/** `/proc/stat`'s first line: busy and total jiffies over every core. */
async function cpuJiffies(): Promise<{ busy: number; total: number }> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
  const fields = line.trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  // idle and iowait are the 4th and 5th fields.
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return { busy: total - idle, total };
}

async function readAgent(url: string): Promise<AgentCounters | undefined> {
  try {
    const m = await scrapeMetrics(url, SCRAPE_TIMEOUT_MS);
    const fetched = (source: string): number =>
      m.get('shoal_agent_fetched_bytes_total', { source });
    return {
      origin: fetched('origin'),
      seed: fetched('seed'),
      peer: fetched('peer'),
      uploaded: m.get('shoal_agent_uploaded_bytes_total'),
      deferred: m.get('shoal_agent_pieces_total', { result: 'deferred' }),
      failed: m.get('shoal_agent_pieces_total', { result: 'failed' }),
      toClient: m.get('shoal_agent_served_bytes_total'),
    };
  } catch {
    return undefined;
  }
}

/** Reads every counter each `SAMPLE_INTERVAL_MS` until `stop`. */
export class WaveSampler {
  readonly #agents: readonly SampledAgent[];
  readonly #seedUrl: string;
  readonly #samples: Sample[] = [];
  readonly #stop = new AbortController();
  #loop: Promise<void> = Promise.resolve();
  #started = 0;
  #jiffies = { busy: 0, total: 0 };

  constructor(agents: readonly SampledAgent[], seedUrl: string) {
    this.#agents = agents;
    this.#seedUrl = seedUrl;
  }

  async start(): Promise<void> {
    this.#started = performance.now();
    this.#jiffies = await cpuJiffies();
    this.#loop = this.#run();
  }

  /** Takes one last sample and returns them all. */
  async stop(): Promise<readonly Sample[]> {
    this.#stop.abort();
    await this.#loop;
    await this.#sample();
    return this.#samples;
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    for (;;) {
      try {
        await delay(SAMPLE_INTERVAL_MS, undefined, { signal });
      } catch {
        // Stopped: `stop` takes the last sample.
        return;
      }
      await this.#sample();
    }
  }

  async #sample(): Promise<void> {
    const atMs = performance.now() - this.#started;
    const [agents, seed, jiffies] = await Promise.all([
      Promise.all(this.#agents.map((a) => readAgent(a.url))),
      scrapeMetrics(this.#seedUrl, SCRAPE_TIMEOUT_MS).then(
        (m) => ({
          served: m.get('shoal_seedserver_served_bytes_total'),
          ingested: m.get('shoal_seedserver_ingested_bytes_total'),
        }),
        () => undefined,
      ),
      cpuJiffies(),
    ]);
    // Jiffies are 1/100 s (USER_HZ) on Linux.
    const busyS = (jiffies.busy - this.#jiffies.busy) / 100;
    const totalS = (jiffies.total - this.#jiffies.total) / 100;
    this.#jiffies = jiffies;
    this.#samples.push({
      atMs,
      agents,
      seedServed: seed?.served,
      seedIngested: seed?.ingested,
      busyS,
      totalS,
    });
  }
}

/** What the samples say of one node. */
export interface NodeTimeline {
  /** First bytes fetched, in s since the wave's start (undefined: none). */
  readonly firstS: number | undefined;
  /** Half the image fetched, and all of it, in s. */
  readonly halfS: number | undefined;
  readonly fullS: number | undefined;
  /**
   * When the agent had sent containerd half the image, and all of it, in s: it sends a blob's
   * bytes only as far as its verified prefix reaches, so this trails `halfS` and `fullS` by
   * what the pieces' order holds back.
   */
  readonly clientHalfS: number | undefined;
  readonly clientFullS: number | undefined;
  /** Seconds between the first bytes and the whole image with nothing fetched in a sample. */
  readonly idleS: number;
  /** Fetch rate from the first bytes to the whole image, in bytes/s. */
  readonly rate: number;
  readonly last: AgentCounters | undefined;
}

/** One node's figures, `index` in the wave's order; `imageBytes` is what each node needs. */
export function nodeTimeline(
  samples: readonly Sample[],
  index: number,
  imageBytes: number,
): NodeTimeline {
  let firstS: number | undefined;
  let halfS: number | undefined;
  let fullS: number | undefined;
  let clientHalfS: number | undefined;
  let clientFullS: number | undefined;
  let idleS = 0;
  let previous: { atMs: number; bytes: number } | undefined;
  let last: AgentCounters | undefined;
  for (const sample of samples) {
    const counters = sample.agents[index];
    if (counters === undefined) {
      continue;
    }
    last = counters;
    const bytes = counters.origin + counters.seed + counters.peer;
    const atS = sample.atMs / 1000;
    if (firstS === undefined && bytes > 0) {
      firstS = atS;
    }
    if (halfS === undefined && bytes >= imageBytes / 2) {
      halfS = atS;
    }
    if (
      previous !== undefined &&
      firstS !== undefined &&
      fullS === undefined &&
      bytes === previous.bytes
    ) {
      idleS += (sample.atMs - previous.atMs) / 1000;
    }
    if (fullS === undefined && bytes >= imageBytes) {
      fullS = atS;
    }
    const toClient = counters.toClient;
    if (clientHalfS === undefined && toClient >= imageBytes / 2) {
      clientHalfS = atS;
    }
    if (clientFullS === undefined && toClient >= imageBytes) {
      clientFullS = atS;
    }
    previous = { atMs: sample.atMs, bytes };
  }
  const span = firstS !== undefined && fullS !== undefined ? fullS - firstS : 0;
  return {
    firstS,
    halfS,
    fullS,
    clientHalfS,
    clientFullS,
    idleS,
    rate: span > 0 ? imageBytes / span : 0,
    last,
  };
}

/**
 * What the samples say of the seed server's link: seconds it sent nothing, and when it ended;
 * and when it had taken in half and all of what it took in during the wave (a seed that
 * takes the image in at its link's rate cannot send a piece before it has it).
 */
export function seedTimeline(samples: readonly Sample[]): {
  readonly idleS: number;
  readonly firstSendS: number | undefined;
  readonly lastSendS: number | undefined;
  readonly ingestHalfS: number | undefined;
  readonly ingestDoneS: number | undefined;
  /**
   * The seed's intake from its first ingested byte to its last, in bytes per second: on
   * average, and the median and tenth percentile of the rates between samples (how steady).
   */
  readonly intake: { readonly mean: number; readonly median: number; readonly p10: number };
} {
  const ingested = samples.filter((s) => s.seedIngested !== undefined);
  const total = ingested.at(-1)?.seedIngested ?? 0;
  const reached = (bytes: number): number | undefined => {
    const at = ingested.find((s) => total > 0 && (s.seedIngested ?? 0) >= bytes);
    return at === undefined ? undefined : at.atMs / 1000;
  };
  let idleS = 0;
  let firstSendS: number | undefined;
  let lastSendS: number | undefined;
  let previous: { atMs: number; served: number } | undefined;
  let firstSend = false;
  for (const sample of samples) {
    if (sample.seedServed === undefined) {
      continue;
    }
    if (previous !== undefined) {
      if (sample.seedServed > previous.served) {
        firstSend = true;
        firstSendS ??= previous.atMs / 1000;
        lastSendS = sample.atMs / 1000;
      } else if (firstSend) {
        idleS += (sample.atMs - previous.atMs) / 1000;
      }
    }
    previous = { atMs: sample.atMs, served: sample.seedServed };
  }
  // Idle seconds after the last send are the tail, not a gap.
  if (lastSendS !== undefined && previous !== undefined) {
    idleS -= Math.max(0, previous.atMs / 1000 - lastSendS);
  }
  return {
    idleS: Math.max(0, idleS),
    firstSendS,
    lastSendS,
    ingestHalfS: reached(total / 2),
    ingestDoneS: reached(total),
    intake: intakeRates(ingested, total),
  };
}

/** See `seedTimeline`'s `intake`: the rates between samples while the seed took bytes in. */
function intakeRates(
  ingested: readonly Sample[],
  total: number,
): { readonly mean: number; readonly median: number; readonly p10: number } {
  const rates: number[] = [];
  let first: Sample | undefined;
  let last: Sample | undefined;
  for (let i = 1; i < ingested.length; i += 1) {
    const before = ingested[i - 1];
    const after = ingested[i];
    if (before === undefined || after === undefined || (before.seedIngested ?? 0) >= total) {
      continue;
    }
    if ((after.seedIngested ?? 0) === 0) {
      continue;
    }
    first ??= before;
    last = after;
    const seconds = (after.atMs - before.atMs) / 1000;
    if (seconds > 0) {
      rates.push(((after.seedIngested ?? 0) - (before.seedIngested ?? 0)) / seconds);
    }
  }
  if (first === undefined || last === undefined || last.atMs <= first.atMs) {
    return { mean: 0, median: 0, p10: 0 };
  }
  return {
    mean:
      ((last.seedIngested ?? 0) - (first.seedIngested ?? 0)) / ((last.atMs - first.atMs) / 1000),
    median: quantile(rates, 0.5),
    p10: quantile(rates, 0.1),
  };
}

/** The machine's busy share of its cores over the samples, 0 to 1. */
export function machineBusy(samples: readonly Sample[]): number {
  const busy = samples.reduce((sum, s) => sum + s.busyS, 0);
  const total = samples.reduce((sum, s) => sum + s.totalS, 0);
  return total > 0 ? busy / total : 0;
}
