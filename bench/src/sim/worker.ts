/**
 * A simulator worker: one process running a share of the virtual agents over one NATS
 * connection (or a few). Each virtual agent speaks the agent's control-plane protocol as
 * `services/agent/src/swarm/client.ts` does: its own hand-out subscription, a piece-want per
 * blob every want interval while it downloads, batched piece-haves carrying the full piece
 * set, a piece-hash consumer per blob download, a peer-gone when it leaves, and (optionally)
 * its preheat durable consumer and presence entry. No piece bytes move: a piece "arrives"
 * when the agent's download budget and a handed-out holder's upload budget allow it.
 *
 * Started by the simulator with `fork`; it is told what to do over IPC (see `stats.ts`).
 */
import { setTimeout as sleep } from 'node:timers/promises';

import {
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  agentPresence,
  handoutSubject,
  haveDue,
  KV_BUCKETS,
  peerGone,
  peerGoneSubject,
  pieceHashesSubject,
  pieceHave,
  pieceHaveSubject,
  pieceWant,
  pieceWantSubject,
  preheatNodesConsumer,
  STREAMS,
  wantPacing,
  WantPacer,
  type AgentPresence,
  type Handout,
  type PeerGone,
  type PeerInfo,
  type PieceHashes,
  type PieceHave,
  type PieceWant,
} from '@shoal/proto';
import { ensureConsumer } from '@shoal/runtime/nats';

import {
  heldRanges,
  PUBLISHED_KINDS,
  RECEIVED_KINDS,
  tallies,
  type FromWorker,
  type PublishedKind,
  type SimBlob,
  type ToWorker,
  type WorkerConfig,
  type WorkerReport,
} from './stats.js';

/** How often the worker moves every agent on, in ms (the agent schedules every 250 ms). */
const TICK_MS = 100;
/** Longest burst a budget may save up, in seconds of its rate. */
const BURST_S = 0.5;
/** Wait before a piece-hash direct get that failed is asked again, in ms. */
const DIRECT_GET_RETRY_MS = 1_000;
/** How long a churned agent stays away before it rejoins, in ms. */
const REJOIN_AFTER_MS = 1_000;
/** The preheat consumer's settings, as `services/agent/src/preheat/node-preheat.ts` has them. */
const PREHEAT_ACK_WAIT_MS = 60_000;
const PREHEAT_INACTIVE_MS = 24 * 60 * 60 * 1000;

interface Connection {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly kv: KV | undefined;
}

/** One blob being downloaded by one agent. */
interface Download {
  readonly blob: SimBlob;
  readonly held: Uint8Array;
  heldCount: number;
  hashesKnown: boolean;
  /** The latest hand-out's peers for this blob. */
  peers: Handout['peers'];
  /** The same peers but the agent itself, made once per hand-out for `#fetch`'s rounds. */
  offers: Offer[];
  lastWant: number;
  /** When wants go out with `--pacing paced`, as the agent paces them. */
  readonly pacer: WantPacer;
  lastHave: number;
  haveDirty: boolean;
  /**
   * A piece came from a seed since the last have: the next have is due whatever the step,
   * as the agent announces pieces from a seed with its next batch.
   */
  seedPiece: boolean;
  /** Pieces the last have announced. */
  announced: number;
  /**
   * Pieces some peer of the latest hand-out holds (by its snapshot) that the download lacks,
   * for `--pacing paced`'s check of whether any holder is known: counted at each hand-out, less each piece taken.
   */
  offered: Uint8Array;
  offeredMissing: number;
  readonly startedAt: number;
  doneAt: number | undefined;
  /** Pieces the download budget allows but not yet taken (fractional). */
  credit: number;
  /** When the download last got a piece (or started), in ms since the epoch. */
  lastProgress: number;
  /** True once it stalled and reads the rest from the origin, as the agent falls back. */
  fromOrigin: boolean;
  readonly stopHashes: AbortController;
}

interface Agent {
  readonly index: number;
  readonly peer: PeerInfo;
  readonly conn: Connection;
  readonly joinAt: number;
  joined: boolean;
  /** When the agent leaves (churn) and rejoins, in ms since the epoch; undefined: never. */
  leaveAt: number | undefined;
  rejoinAt: number | undefined;
  downloads: Download[];
  /** Publish times of wants not yet answered, per blob, oldest first; kept across a rejoin. */
  readonly outstanding: Map<string, number[]>;
  nextPresence: number;
  preheat: ConsumerMessages | undefined;
}

/** Upload budget of one holder, as seen by this worker (its share of the holder's rate). */
interface Budget {
  tokens: number;
  at: number;
  /** Pieces per second it refills at: this worker's share of the holder's upload rate. */
  readonly rate: number;
}

/** Refills `budget` up to `now`, to at most `BURST_S` of its rate. */
function refill(budget: Budget, now: number): Budget {
  budget.tokens = Math.min(
    budget.rate * BURST_S,
    budget.tokens + (budget.rate * (now - budget.at)) / 1000,
  );
  budget.at = now;
  return budget;
}

/** A holder of the latest hand-out other than the agent itself: its pieces and its budget. */
interface Offer {
  readonly holder: Handout['peers'][number];
  readonly held: Uint8Array;
  readonly budget: Budget;
}

/**
 * A holder of piece `index` among `holders` (each with upload budget left), from a random
 * one on, whose budget it then spends; a holder left without budget is taken out of `holders`.
 */
function holderFor(holders: Offer[], index: number): Offer['holder'] | undefined {
  const offset = Math.floor(Math.random() * holders.length);
  for (let k = 0; k < holders.length; k++) {
    const at = (offset + k) % holders.length;
    const offer = holders[at];
    if (offer === undefined || offer.held[index] !== 1) {
      continue;
    }
    offer.budget.tokens -= 1;
    if (offer.budget.tokens < 1) {
      holders.splice(at, 1);
    }
    return offer.holder;
  }
  return undefined;
}

/**
 * The pieces a hand-out says `holder` holds, as one byte per piece (1: held) of a blob of
 * `pieces` pieces (a seed: every one).
 */
function piecesOf(holder: Handout['peers'][number], pieces: number): Uint8Array {
  const complete = holder.complete || holder.seed;
  const end = complete ? pieces : Math.max(pieces, holder.pieces.at(-1)?.[1] ?? 0);
  const bytes = new Uint8Array(end);
  if (complete) {
    bytes.fill(1);
  } else {
    for (const [from, to] of holder.pieces) {
      bytes.fill(1, from, to);
    }
  }
  return bytes;
}

class Worker {
  readonly #config: WorkerConfig;
  readonly #connections: Connection[] = [];
  readonly #agents: Agent[] = [];
  readonly #budgets = new Map<string, Budget>();
  /** `#fetch`'s pieces worth trying in a scan (see `#markHoldable`). */
  #holdable = new Uint8Array(0);
  /** `#fetch`'s holders with budget left in the round, the same array each round. */
  readonly #roundHolders: Offer[] = [];
  readonly #published = tallies(PUBLISHED_KINDS);
  readonly #received = tallies(RECEIVED_KINDS);
  readonly #latencies: number[] = [];
  readonly #downloadMs: number[] = [];
  readonly #errors: Record<string, number> = {};
  #wants = 0;
  #wantFailures = 0;
  #extraHandouts = 0;
  #answeredTogether = 0;
  #completed = 0;
  #started = 0;
  #churned = 0;
  #hashConsumers = 0;
  #fallbacks = 0;
  #originPieces = 0;
  #lastCompletionAt = 0;
  #tick: NodeJS.Timeout | undefined;
  #progress: NodeJS.Timeout | undefined;
  #lastTick = 0;
  /** Gaps between scheduling rounds while downloads ran: the sum (ms) and how many. */
  #tickGapSumMs = 0;
  #tickGaps = 0;
  /** Message kinds already checked against their schema once (see `#check`). */
  readonly #checked = new Set<string>();

  constructor(config: WorkerConfig) {
    this.#config = config;
  }

  /** Connects, subscribes every agent to its hand-outs, and waits for the server to have them. */
  async prepare(): Promise<void> {
    const config = this.#config;
    for (let c = 0; c < config.connections; c++) {
      const servers = config.natsUrls[(config.worker + c) % config.natsUrls.length] ?? '';
      const nc = await connect({
        servers,
        name: `${config.connectionName}-w${String(config.worker)}-c${String(c)}`,
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
        timeout: 5000,
        // As the agent's connection (`libs/runtime/src/nats.ts`): no stack captured per
        // request and per JetStream publish, which cost these workers a seventh of their CPU.
        noAsyncTraces: true,
      });
      const js = jetstream(nc);
      const jsm = await jetstreamManager(nc);
      const kv = config.preheat ? await new Kvm(js).open(KV_BUCKETS.agents.bucket) : undefined;
      this.#connections.push({ nc, js, jsm, kv });
    }
    for (let index = config.firstAgent; index < config.endAgent; index++) {
      const conn = this.#connections[index % this.#connections.length];
      if (conn === undefined) {
        throw new Error('no connection');
      }
      const id = `sim-${String(index).padStart(5, '0')}`;
      const agent: Agent = {
        index,
        peer: {
          id,
          // Never contacted: no piece bytes move in the simulation.
          url: `http://127.0.0.1:${String(20_000 + (index % 40_000))}`,
          zone: `zone-${'abc'[index % 3] ?? 'a'}`,
        },
        conn,
        joinAt: 0,
        joined: false,
        leaveAt: undefined,
        rejoinAt: undefined,
        downloads: [],
        outstanding: new Map(),
        nextPresence: 0,
        preheat: undefined,
      };
      conn.nc.subscribe(handoutSubject(id), {
        callback: (error, msg) => {
          if (error === null) {
            this.#onHandout(agent, msg.data);
          }
        },
      });
      this.#agents.push(agent);
    }
    for (const { nc } of this.#connections) {
      await nc.flush();
    }
  }

  /** Starts the clock: agents join evenly over the ramp from `startAt`. */
  go(startAt: number): void {
    const { rampMs, totalAgents, churn } = this.#config;
    for (const agent of this.#agents) {
      const joinAt = startAt + Math.floor((rampMs * agent.index) / Math.max(1, totalAgents));
      (agent as { joinAt: number }).joinAt = joinAt;
      // A fixed, evenly spread choice of agents that leave once, 1 to 3 s after joining.
      if (((agent.index * 2_654_435_761) % 1000) / 1000 < churn) {
        agent.leaveAt = joinAt + 1_000 + Math.random() * 2_000;
      }
    }
    this.#lastTick = Date.now();
    this.#tick = setInterval(() => this.#step(), TICK_MS);
    this.#progress = setInterval(() => this.#sendProgress(), 1_000);
  }

  /** Waits up to `graceMs` for every want to be answered, stops, and reports. */
  async finish(graceMs: number): Promise<WorkerReport> {
    const until = Date.now() + graceMs;
    while (this.#unanswered() > 0 && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    clearInterval(this.#tick);
    clearInterval(this.#progress);
    // Why unfinished downloads did not finish, as errors: no piece hashes, or no hand-out yet.
    for (const agent of this.#agents) {
      for (const download of agent.downloads) {
        if (download.doneAt === undefined) {
          this.#error(
            !download.hashesKnown
              ? 'unfinished: no piece hashes'
              : download.peers.length === 0
                ? 'unfinished: no hand-out'
                : 'unfinished: too slow',
          );
        }
      }
    }
    for (const agent of this.#agents) {
      for (const download of agent.downloads) {
        download.stopHashes.abort();
      }
      agent.preheat?.stop();
    }
    const report: WorkerReport = {
      published: this.#published,
      received: this.#received,
      latenciesMs: this.#latencies,
      wants: this.#wants,
      wantPublishFailures: this.#wantFailures,
      extraHandouts: this.#extraHandouts,
      answeredTogether: this.#answeredTogether,
      unanswered: this.#unanswered(),
      completed: this.#completed,
      started: this.#started,
      downloadMs: this.#downloadMs,
      lastCompletionAt: this.#lastCompletionAt,
      churned: this.#churned,
      hashConsumers: this.#hashConsumers,
      fallbacks: this.#fallbacks,
      originPieces: this.#originPieces,
      cpuS: (process.cpuUsage().user + process.cpuUsage().system) / 1e6,
      tickGapSumMs: this.#tickGapSumMs,
      tickGaps: this.#tickGaps,
      errors: this.#errors,
    };
    await Promise.all(this.#connections.map(({ nc }) => nc.close().catch(() => undefined)));
    return report;
  }

  #unanswered(): number {
    let count = 0;
    for (const agent of this.#agents) {
      for (const queue of agent.outstanding.values()) {
        count += queue.length;
      }
    }
    return count;
  }

  #sendProgress(): void {
    let done = 0;
    for (const agent of this.#agents) {
      if (agent.joined && agent.rejoinAt === undefined) {
        done += agent.downloads.filter((d) => d.doneAt !== undefined).length;
      }
    }
    send({ type: 'progress', done, of: this.#agents.length * this.#config.blobs.length });
  }

  /** One scheduling round for every agent: join, leave, fetch, want, have, presence. */
  #step(): void {
    const now = Date.now();
    const dt = Math.min(1, (now - this.#lastTick) / 1000);
    // How late the rounds run (planned every TICK_MS): a have goes out at most once per
    // round, so a starved worker merges more have steps than an agent on its own node would.
    if (this.#completed < this.#agents.length * this.#config.blobs.length) {
      this.#tickGapSumMs += now - this.#lastTick;
      this.#tickGaps += 1;
    }
    this.#lastTick = now;
    for (const agent of this.#agents) {
      if (!agent.joined) {
        if (now >= agent.joinAt) {
          this.#join(agent, now);
        }
        continue;
      }
      if (agent.rejoinAt !== undefined) {
        if (now >= agent.rejoinAt) {
          agent.rejoinAt = undefined;
          this.#startDownloads(agent, now);
        }
        continue;
      }
      if (agent.leaveAt !== undefined && now >= agent.leaveAt) {
        this.#leave(agent, now);
        continue;
      }
      const stallMs = this.#config.stallTimeoutMs;
      for (const download of agent.downloads) {
        // The agent's stall timeout: no piece for this long, and the rest comes from the origin.
        if (
          download.doneAt === undefined &&
          !download.fromOrigin &&
          stallMs > 0 &&
          now - download.lastProgress > stallMs
        ) {
          download.fromOrigin = true;
          download.stopHashes.abort();
          this.#fallbacks += 1;
          this.#originPieces += download.blob.pieces - download.heldCount;
        }
      }
      const active = agent.downloads.filter(
        (d) => d.doneAt === undefined && (d.hashesKnown || d.fromOrigin),
      );
      for (const download of agent.downloads) {
        if (download.doneAt !== undefined) {
          continue;
        }
        if (download.hashesKnown || download.fromOrigin) {
          this.#fetch(download, dt / active.length, now);
        }
        // `#fetch` may just have completed it; reading from the origin, it asks for no peers.
        const due = isDone(download) || download.fromOrigin ? 'no' : this.#wantDue(download, now);
        if (due !== 'no') {
          download.lastWant = now;
          download.pacer.sent(now, due === 'no-holder');
          this.#want(agent, download, now);
        }
      }
      for (const download of agent.downloads) {
        if (
          download.haveDirty &&
          now - download.lastHave >= this.#config.haveIntervalMs &&
          (this.#config.pacing === 'fixed' ||
            download.seedPiece ||
            haveDue(download.announced, download.heldCount, download.blob.pieces))
        ) {
          download.haveDirty = false;
          download.seedPiece = false;
          download.lastHave = now;
          download.announced = download.heldCount;
          download.pacer.announced(now);
          this.#have(agent, download);
        }
      }
      if (this.#config.preheat && now >= agent.nextPresence) {
        agent.nextPresence = now + this.#config.presenceIntervalMs;
        this.#presence(agent, now);
      }
    }
  }

  /**
   * Whether a download asks for peers now: every want interval with `--pacing fixed`; paced
   * as the agent does otherwise (see `#noHolder`).
   */
  #wantDue(download: Download, now: number): 'no' | 'yes' | 'no-holder' {
    if (this.#config.pacing === 'fixed') {
      return now - download.lastWant >= this.#config.wantIntervalMs ? 'yes' : 'no';
    }
    const noHolder = this.#noHolder(download);
    if (!download.pacer.due(now, noHolder)) {
      return 'no';
    }
    return noHolder ? 'no-holder' : 'yes';
  }

  /** True when no peer of the latest hand-out holds a piece the download lacks. */
  #noHolder(download: Download): boolean {
    return download.offeredMissing === 0;
  }

  /** Counts the pieces the hand-out's peers offer that the download lacks. */
  #countOffered(agent: Agent, download: Download): void {
    const { offered, held } = download;
    offered.fill(0);
    for (const holder of download.peers) {
      if (holder.peer.id === agent.peer.id) {
        continue;
      }
      if (holder.complete) {
        offered.fill(1);
        break;
      }
      for (const [start, end] of holder.pieces) {
        offered.fill(1, start, Math.min(end, offered.length));
      }
    }
    let missing = 0;
    for (let index = 0; index < offered.length; index++) {
      if (offered[index] === 1 && held[index] === 0) {
        missing += 1;
      }
    }
    download.offeredMissing = missing;
  }

  #join(agent: Agent, now: number): void {
    agent.joined = true;
    if (this.#config.preheat) {
      this.#openPreheat(agent);
      agent.nextPresence = now;
    }
    this.#startDownloads(agent, now);
  }

  #startDownloads(agent: Agent, now: number): void {
    agent.downloads = this.#config.blobs.map((blob) => {
      const download: Download = {
        blob,
        held: new Uint8Array(blob.pieces),
        heldCount: 0,
        hashesKnown: false,
        peers: [],
        offers: [],
        lastWant: 0,
        pacer: new WantPacer(wantPacing(this.#config.wantIntervalMs)),
        lastHave: 0,
        announced: 0,
        offered: new Uint8Array(blob.pieces),
        offeredMissing: 0,
        lastProgress: now,
        fromOrigin: false,
        haveDirty: false,
        seedPiece: false,
        startedAt: now,
        doneAt: undefined,
        credit: 0,
        stopHashes: new AbortController(),
      };
      this.#started += 1;
      this.#followHashes(agent, download);
      return download;
    });
  }

  /** Leaves every swarm as a stopping agent does (peer-gone), and comes back from scratch. */
  #leave(agent: Agent, now: number): void {
    agent.leaveAt = undefined;
    if (agent.downloads.every((d) => d.doneAt !== undefined)) {
      return;
    }
    this.#churned += 1;
    for (const download of agent.downloads) {
      download.stopHashes.abort();
    }
    agent.downloads = [];
    agent.rejoinAt = now + REJOIN_AFTER_MS;
    const message: PeerGone = { type: 'peer-gone', peer: agent.peer.id };
    void this.#publish(agent, 'peer-gone', peerGone, peerGoneSubject(agent.peer.id), message);
  }

  /** Takes as many missing pieces as the budgets allow from the hand-out's holders. */
  #fetch(download: Download, dtShare: number, now: number): void {
    const rate = this.#config.downloadPiecesPerS;
    download.credit = Math.min(download.credit + rate * dtShare, rate * BURST_S + 1);
    const pieces = download.blob.pieces;
    if (download.fromOrigin) {
      // Ranged reads from the origin: the missing pieces in order, at the download rate. The
      // agent announces the blob once it is whole.
      for (let index = 0; index < pieces && download.credit >= 1; index++) {
        if (download.held[index] === 0) {
          download.held[index] = 1;
          download.heldCount += 1;
          download.credit -= 1;
        }
      }
      this.#completeIfWhole(download, now);
      return;
    }
    // Only holders with upload budget left this round can give a piece; one that spends its
    // last leaves the list, and with none left the round's search ends (it found nothing
    // else before, at the cost of scanning every piece for every download).
    const holders = this.#roundHolders;
    holders.length = 0;
    for (const offer of download.offers) {
      if (refill(offer.budget, now).tokens >= 1) {
        holders.push(offer);
      }
    }
    // For the scan: the pieces those holders hold, the only ones worth asking them for. Marked
    // when the scan starts, in a buffer of the worker's own (one per download per round kept
    // the collector busy); a random draw asks the holders directly.
    let holdable: Uint8Array | undefined;
    let attempts = 0;
    let scan = -1;
    while (download.credit >= 1 && download.heldCount < pieces && holders.length > 0) {
      // Random pieces, as rarest-first with random ties spreads them; a scan when few are left.
      let index: number;
      if (attempts < 32) {
        attempts += 1;
        index = Math.floor(Math.random() * pieces);
      } else {
        scan += 1;
        if (scan >= pieces) {
          return;
        }
        index = scan;
        holdable ??= this.#markHoldable(holders, pieces);
      }
      if (download.held[index] === 1 || (holdable !== undefined && holdable[index] === 0)) {
        continue;
      }
      const holder = holderFor(holders, index);
      if (holder === undefined) {
        continue;
      }
      download.seedPiece ||= holder.seed;
      download.held[index] = 1;
      download.heldCount += 1;
      download.credit -= 1;
      download.haveDirty = true;
      download.lastProgress = now;
      if (download.offered[index] === 1) {
        download.offeredMissing -= 1;
      }
      download.pacer.gotPiece(now);
    }
    this.#completeIfWhole(download, now);
  }

  #completeIfWhole(download: Download, now: number): void {
    if (download.heldCount === download.blob.pieces && download.doneAt === undefined) {
      download.haveDirty = true;
      download.doneAt = now;
      download.stopHashes.abort();
      this.#completed += 1;
      this.#downloadMs.push(now - download.startedAt);
      this.#lastCompletionAt = Math.max(this.#lastCompletionAt, now);
    }
  }

  /** The pieces `holders` hold, one byte each (1: held), in the worker's buffer (see `#fetch`). */
  #markHoldable(holders: readonly Offer[], pieces: number): Uint8Array {
    if (this.#holdable.length < pieces) {
      this.#holdable = new Uint8Array(pieces);
    }
    const holdable = this.#holdable.fill(0, 0, pieces);
    for (const { held } of holders) {
      for (let index = 0; index < pieces; index++) {
        holdable[index] = (holdable[index] ?? 0) | (held[index] ?? 0);
      }
    }
    return holdable;
  }

  /** A holder's upload budget, refilled up to `now` (this worker's share of its rate). */
  #budgetOf(holder: Handout['peers'][number], now: number): Budget {
    const id = holder.peer.id;
    const rate =
      (holder.seed ? this.#config.seedPiecesPerS : this.#config.uploadPiecesPerS) /
      this.#config.workers;
    let budget = this.#budgets.get(id);
    if (budget === undefined) {
      budget = { tokens: rate * BURST_S, at: now, rate };
      this.#budgets.set(id, budget);
    }
    return refill(budget, now);
  }

  #want(agent: Agent, download: Download, now: number): void {
    const message: PieceWant = {
      type: 'piece-want',
      blob: download.blob.digest,
      peer: agent.peer,
      have: heldRanges(download.held),
      registry: this.#config.registry,
      repository: this.#config.repository,
      limit: this.#config.wantLimit,
    };
    let queue = agent.outstanding.get(download.blob.digest);
    if (queue === undefined) {
      queue = [];
      agent.outstanding.set(download.blob.digest, queue);
    }
    queue.push(now);
    this.#wants += 1;
    const published = this.#publish(
      agent,
      'piece-want',
      pieceWant,
      pieceWantSubject(download.blob.digest, agent.peer.id),
      message,
    );
    void published.then((ok) => {
      if (!ok) {
        this.#wantFailures += 1;
        // A want JetStream refused gets no hand-out: it is not waited for.
        const at = queue.indexOf(now);
        if (at >= 0) {
          queue.splice(at, 1);
        }
      }
    });
  }

  #have(agent: Agent, download: Download): void {
    const complete = download.heldCount === download.blob.pieces;
    const message: PieceHave = {
      type: 'piece-have',
      blob: download.blob.digest,
      peer: agent.peer,
      pieces: heldRanges(download.held),
      complete,
      seed: false,
    };
    void this.#publish(
      agent,
      'piece-have',
      pieceHave,
      pieceHaveSubject(download.blob.digest, agent.peer.id),
      message,
    );
  }

  #presence(agent: Agent, now: number): void {
    const kv = agent.conn.kv;
    if (kv === undefined) {
      return;
    }
    const entry: AgentPresence = {
      type: 'agent-presence',
      peer: agent.peer.id,
      labels: {},
      mode: 'mixed',
      ...(agent.peer.zone === undefined ? {} : { zone: agent.peer.zone }),
      at: now,
    };
    const data = this.#encode('presence', agentPresence, entry);
    this.#count(this.#published, 'presence', data.length);
    this.#count(this.#received, 'puback', 0);
    kv.put(agent.peer.id, data).catch(() => this.#error('presence put'));
  }

  /**
   * Publishes to JetStream as the agent does (`js.publish`, waiting for the stream's
   * acknowledgement); resolves false when it is not acknowledged.
   */
  async #publish(
    agent: Agent,
    kind: PublishedKind,
    schema: { parse(input: unknown): unknown },
    subject: string,
    message: unknown,
  ): Promise<boolean> {
    const data = this.#encode(kind, schema, message);
    this.#count(this.#published, kind, data.length);
    try {
      await agent.conn.js.publish(subject, data, { timeout: 10_000 });
      this.#count(this.#received, 'puback', 0);
      return true;
    } catch {
      this.#error(`${kind} publish`);
      return false;
    }
  }

  /**
   * JSON as the agent sends it. The first message of each kind is checked against its schema
   * (the agent checks every one; here that would cost the simulator more CPU than the
   * trackers it measures, and every later message is built the same way).
   */
  #encode(kind: string, schema: { parse(input: unknown): unknown }, message: unknown): Buffer {
    if (!this.#checked.has(kind)) {
      schema.parse(message);
      this.#checked.add(kind);
    }
    return Buffer.from(JSON.stringify(message), 'utf8');
  }

  #onHandout(agent: Agent, data: Uint8Array): void {
    this.#count(this.#received, 'handout', data.length);
    let answer: Handout;
    try {
      // Parsed, not schema-checked, for the same reason as `#encode`: the tracker checked it.
      answer = JSON.parse(Buffer.from(data).toString('utf8')) as Handout;
    } catch {
      this.#error('handout not JSON');
      return;
    }
    // A hand-out answers every want of this agent for this blob still waiting: the agent
    // uses the latest hand-out, whichever want it answers, and the tracker answers only the
    // latest of an asker's wants waiting in its queue. Each waiting want's latency is its
    // wait for the next hand-out.
    const queue = agent.outstanding.get(answer.blob);
    if (queue === undefined || queue.length === 0) {
      this.#extraHandouts += 1;
    } else {
      const at = Date.now();
      for (const askedAt of queue) {
        this.#latencies.push(at - askedAt);
      }
      this.#answeredTogether += queue.length - 1;
      queue.length = 0;
    }
    const download = agent.downloads.find((d) => d.blob.digest === answer.blob);
    if (download !== undefined && download.doneAt === undefined) {
      download.peers = answer.peers;
      const now = Date.now();
      download.offers = answer.peers
        .filter((holder) => holder.peer.id !== agent.peer.id)
        .map((holder) => ({
          holder,
          held: piecesOf(holder, download.blob.pieces),
          budget: this.#budgetOf(holder, now),
        }));
      this.#countOffered(agent, download);
      download.pacer.handout(
        answer.peers.some(
          (p) => p.peer.id !== agent.peer.id && (p.complete || p.pieces.length > 0),
        ),
      );
    }
  }

  /**
   * Reads the blob's piece hashes with a consumer of its own, as `SwarmClient.followHashes`.
   * When the consumer cannot be opened, the error is counted and, as for the agent, the
   * download stalls and falls back to the origin.
   */
  #followHashes(agent: Agent, download: Download): void {
    if (this.#config.hashReads === 'direct') {
      this.#readHashesDirect(agent, download);
      return;
    }
    const { js } = agent.conn;
    const signal = download.stopHashes.signal;
    this.#hashConsumers += 1;
    void (async () => {
      const consumer = await js.consumers.get(STREAMS.pieces.name, {
        filter_subjects: pieceHashesSubject(download.blob.digest),
        deliver_policy: DeliverPolicy.All,
      });
      if (signal.aborted) {
        return;
      }
      const messages = await consumer.consume();
      const stop = (): void => void messages.close();
      signal.addEventListener('abort', stop, { once: true });
      // Aborted while the consumer was being created: the listener came too late.
      if (isAborted(signal)) {
        stop();
      }
      for await (const msg of messages) {
        this.#count(this.#received, 'piece-hashes', msg.data.length);
        const batch = JSON.parse(Buffer.from(msg.data).toString('utf8')) as PieceHashes;
        if (batch.first + batch.hashes.length >= download.blob.pieces) {
          download.hashesKnown = true;
        }
      }
    })().catch(() => this.#error('piece-hash consumer'));
  }

  /**
   * Reads the blob's piece hashes without a consumer: a core subscription to the blob's hash
   * subject first (so a batch published meanwhile is not missed), then the stored batches one
   * direct get each (`next_by_subj` from the last sequence read). A batch seen twice counts
   * once.
   */
  #readHashesDirect(agent: Agent, download: Download): void {
    const { nc, jsm } = agent.conn;
    const subject = pieceHashesSubject(download.blob.digest);
    const signal = download.stopHashes.signal;
    const firsts = new Set<number>();
    let known = 0;
    const onBatch = (data: Uint8Array): void => {
      this.#count(this.#received, 'piece-hashes', data.length);
      const batch = JSON.parse(Buffer.from(data).toString('utf8')) as PieceHashes;
      if (!firsts.has(batch.first)) {
        firsts.add(batch.first);
        known += batch.hashes.length;
      }
      if (known >= download.blob.pieces) {
        download.hashesKnown = true;
        download.stopHashes.abort();
      }
    };
    const sub = nc.subscribe(subject, {
      callback: (error, msg) => {
        if (error === null) {
          onBatch(msg.data);
        }
      },
    });
    signal.addEventListener('abort', () => sub.unsubscribe(), { once: true });
    void (async () => {
      let seq = 0;
      while (!isAborted(signal)) {
        let stored;
        try {
          stored = await jsm.direct.getMessage(STREAMS.pieces.name, {
            seq: seq + 1,
            next_by_subj: subject,
          });
        } catch {
          // A get lost to a busy server is asked again, from the same place, a moment later.
          this.#error('piece-hash direct get retried');
          await sleep(DIRECT_GET_RETRY_MS);
          continue;
        }
        if (stored === null) {
          return;
        }
        onBatch(stored.data);
        seq = stored.seq;
      }
    })();
  }

  /** The agent's preheat durable consumer, as `NodePreheat` opens it. */
  #openPreheat(agent: Agent): void {
    const { js, jsm } = agent.conn;
    const name = preheatNodesConsumer(agent.peer.id);
    void (async () => {
      await ensureConsumer(jsm, STREAMS.preheatNodes.name, name, {
        ackWaitMs: PREHEAT_ACK_WAIT_MS,
        maxDeliver: -1,
        maxAckPending: 1,
        startTime: new Date(),
        inactiveMs: PREHEAT_INACTIVE_MS,
        replicas: 1,
      });
      const consumer = await js.consumers.get(STREAMS.preheatNodes.name, name);
      const messages = await consumer.consume({ max_messages: 1 });
      agent.preheat = messages;
      for await (const msg of messages) {
        this.#count(this.#received, 'preheat-task', msg.data.length);
        msg.ack();
      }
    })().catch(() => this.#error('preheat consumer'));
  }

  #count<K extends string>(
    table: Record<K, { msgs: number; bytes: number }>,
    kind: K,
    bytes: number,
  ): void {
    table[kind].msgs += 1;
    table[kind].bytes += bytes;
  }

  #error(kind: string): void {
    this.#errors[kind] = (this.#errors[kind] ?? 0) + 1;
  }
}

/** True once every piece is held; a function, so checks after a call are not narrowed away. */
function isDone(download: Download): boolean {
  return download.doneAt !== undefined;
}

/** `signal.aborted`, read through a call for the same reason. */
function isAborted(signal: AbortSignal): boolean {
  return signal.aborted;
}

function send(message: FromWorker): void {
  process.send?.(message);
}

let worker: Worker | undefined;
let finished = false;
process.on('message', (message: ToWorker) => {
  void (async () => {
    try {
      if (message.type === 'start') {
        worker = new Worker(message.config);
        await worker.prepare();
        send({ type: 'ready' });
      } else if (message.type === 'go') {
        worker?.go(message.startAt);
      } else if (worker !== undefined) {
        const report = await worker.finish(message.graceMs);
        finished = true;
        // Disconnected only once the report (megabytes of latencies) has gone out.
        process.send?.({ type: 'report', report } satisfies FromWorker, () => process.disconnect());
      }
    } catch (error) {
      send({ type: 'failed', error: error instanceof Error ? error.message : String(error) });
      process.exitCode = 1;
      process.disconnect();
    }
  })();
});
// The simulator gone (killed, interrupted) means this worker has nobody to report to.
process.on('disconnect', () => {
  if (worker !== undefined && !finished) {
    process.stderr.write('[sim worker] the simulator went away; exiting\n');
  }
  setTimeout(() => process.exit(process.exitCode ?? 0), 2_000).unref();
});
