#!/usr/bin/env node
/**
 * The tracker's hand-out policy in-process, without NATS: for swarms of several sizes, the CPU
 * a want costs when the policy ranks the whole swarm (what the tracker did before it sampled)
 * against ranking the sample of holders it takes now (`SwarmView.sample`), in the same run,
 * and what each hands out (useful pieces per peer, the asker's zone, someone who can finish
 * the blob, how evenly hand-outs fall on the holders). Reproducible: the swarm comes from a
 * seeded generator.
 *
 * `--askers` says how far along the askers are, `--baseline DIR` runs another build's policy on
 * the same swarms in the same run (A/B of a change to the policy or the holder rings).
 *
 *   node bench/dist/src/sim/handout-cost.js [--swarms 100,1000,10000] [--wants 2000] [--limit 16]
 *     [--askers random|early|late] [--baseline DIR] [--rounds N]
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import * as loadModule from '@shoal/tracker/handout/load';
import * as policyModule from '@shoal/tracker/handout/policy';
import type { SwarmMember } from '@shoal/tracker/handout/policy';
import * as viewModule from '@shoal/tracker/swarm/view';
import type { PieceRanges } from '@shoal/proto';
import { table } from '@shoal/testkit';

import { exitOnProblems, readOptions, seededRandom } from '../cli.js';
import { heldRanges } from './stats.js';

const USAGE = `usage: node bench/dist/src/sim/handout-cost.js [options]

  --swarms LIST   swarm sizes (default 100,300,1000,3000,10000)
  --wants N       wants answered per swarm and way (default 2000)
  --limit N       peers asked for per want (default 16, the agent's)
  --askers WHO    random (default): each asker holds a random share of the blob, as the
                  members do; early: askers hold a tenth of it; late: the blob's last
                  eighth is rare (each piece held by 3 % of the members) and askers hold
                  all the rest and most of it, so most members visited can give them nothing
  --baseline DIR  also run the policy of the tracker built in DIR (a checkout built with
                  tsc -b, e.g. by services/seedserver/tools/build-at.sh) on the same swarms
                  and askers, and print both with their ratio
  --rounds N      with --baseline, measures of each build per swarm, alternating; the
                  medians are printed (default 5)
`;

/** How far along the askers are (`--askers`). */
type Askers = 'random' | 'early' | 'late';
const ASKERS: readonly Askers[] = ['random', 'early', 'late'];

/** The tracker modules a measure runs: this build's, or a baseline's (`--baseline`). */
interface Policy {
  readonly LoadTracker: typeof loadModule.LoadTracker;
  readonly choosePeers: typeof policyModule.choosePeers;
  readonly sampleWindow: typeof policyModule.sampleWindow;
  readonly SwarmView: typeof viewModule.SwarmView;
}

const THIS_BUILD: Policy = {
  LoadTracker: loadModule.LoadTracker,
  choosePeers: policyModule.choosePeers,
  sampleWindow: policyModule.sampleWindow,
  SwarmView: viewModule.SwarmView,
};

/** The policy of the tracker built in `dir` (its `services/tracker/dist`). */
async function baselinePolicy(dir: string): Promise<Policy> {
  const module = async <T>(file: string): Promise<T> =>
    (await import(pathToFileURL(path.resolve(dir, 'services/tracker/dist/src', file)).href)) as T;
  const load = await module<typeof loadModule>('handout/load.js');
  const policy = await module<typeof policyModule>('handout/policy.js');
  const view = await module<typeof viewModule>('swarm/view.js');
  return {
    LoadTracker: load.LoadTracker,
    choosePeers: policy.choosePeers,
    sampleWindow: policy.sampleWindow,
    SwarmView: view.SwarmView,
  };
}

const PIECES = 256;
const ZONES = ['zone-a', 'zone-b', 'zone-c'];
/** Share of members that hold the whole blob; the rest hold a random part of it. */
const COMPLETE_SHARE = 0.1;
const BLOB = `sha256:${'ab'.repeat(32)}`;

/** Random pieces, each held with probability `share`, as the sorted ranges messages carry. */
function randomRanges(next: () => number, share: number): PieceRanges {
  return heldRanges(Uint8Array.from({ length: PIECES }, () => (next() < share ? 1 : 0)));
}

/** First piece of the blob's rare tail with `--askers late`: its last eighth. */
const RARE_FROM = PIECES - PIECES / 8;
/** Share of the members holding each piece of the rare tail with `--askers late`. */
const RARE_SHARE = 0.03;

/** A member's pieces: a random share of the blob, of its rare tail only a few with `late`. */
function memberRanges(next: () => number, share: number, askers: Askers): PieceRanges {
  if (askers !== 'late') {
    return randomRanges(next, share);
  }
  return heldRanges(
    Uint8Array.from({ length: PIECES }, (_, piece) =>
      next() < (piece >= RARE_FROM ? RARE_SHARE : share) ? 1 : 0,
    ),
  );
}

/** What an asker holds: its own set (`random`), a tenth, or all but some of the rare tail. */
function askerRanges(next: () => number, own: PieceRanges, askers: Askers): PieceRanges {
  switch (askers) {
    case 'random':
      return own;
    case 'early':
      return randomRanges(next, 0.1);
    case 'late':
      return heldRanges(
        Uint8Array.from({ length: PIECES }, (_, piece) =>
          piece < RARE_FROM || next() < 0.8 ? 1 : 0,
        ),
      );
  }
}

interface Figures {
  readonly cpuUsPerWant: number;
  readonly usefulPerPeer: number;
  readonly sameZoneShare: number;
  readonly finisherShare: number;
  readonly handedOutShare: number;
  readonly maxPerPeer: number;
}

/** Pieces of the blob `member` can give an asker holding `have`. */
function usefulFor(member: SwarmMember, have: PieceRanges): number {
  let held = 0;
  for (const [start, end] of have) {
    held += end - start;
  }
  if (member.complete || member.seed) {
    return PIECES - held;
  }
  let missing = 0;
  for (const [start, end] of member.pieces) {
    for (let piece = start; piece < end; piece++) {
      if (!have.some(([s, e]) => piece >= s && piece < e)) {
        missing += 1;
      }
    }
  }
  return missing;
}

/** How one measure runs: which policy, on what swarm, for which askers. */
interface Measure {
  readonly policy: Policy;
  readonly size: number;
  readonly wants: number;
  readonly limit: number;
  /** Rank the whole swarm (what the tracker did before it sampled) instead of a sample. */
  readonly whole: boolean;
  readonly askers: Askers;
}

/** Answers `wants` wants on a fresh swarm of `size`, ranking all of it or a sample. */
function measure({ policy, size, wants, limit, whole, askers }: Measure): Figures {
  const { LoadTracker, SwarmView, choosePeers, sampleWindow } = policy;
  // Seeded, so that every run builds the same swarms.
  const next = seededRandom(size);
  const now = 1_764_000_000_000;
  const view = new SwarmView({ maxAgeMs: 3_600_000 });
  let seq = 0;
  view.applyHave(
    {
      type: 'piece-have',
      blob: BLOB,
      peer: { id: 'seed', url: 'http://seed.sim:65010' },
      pieces: [[0, PIECES]],
      complete: true,
      seed: true,
    },
    ++seq,
    now,
    now,
  );
  const haves: PieceRanges[] = [];
  for (let i = 0; i < size; i++) {
    const complete = next() < COMPLETE_SHARE;
    const pieces: PieceRanges = complete ? [[0, PIECES]] : memberRanges(next, next(), askers);
    haves.push(pieces);
    view.applyHave(
      {
        type: 'piece-have',
        blob: BLOB,
        peer: { id: `p${String(i)}`, url: 'http://peer.sim:65002', zone: ZONES[i % 3] ?? '' },
        pieces,
        complete,
        seed: false,
      },
      ++seq,
      now,
      now,
    );
  }
  // What each asker holds, made before the clock starts.
  const asked = haves.map((own) => askerRanges(next, own, askers));
  const load = new LoadTracker(10_000);
  const loadOf = (peer: string): number => load.load(peer, now);
  const chosenPerWant: { chosen: SwarmMember[]; have: PieceRanges; zone: string }[] = [];
  const before = process.cpuUsage();
  for (let w = 0; w < wants; w++) {
    const asker = w % size;
    const ask = {
      peer: { id: `p${String(asker)}`, url: 'http://peer.sim:65002', zone: ZONES[asker % 3] ?? '' },
      have: asked[asker] ?? [],
      limit,
    };
    let chosen: SwarmMember[];
    if (whole) {
      // What the tracker did per want before: every live member, ranked, and a scan for
      // someone who can finish the blob.
      const members = view.members(BLOB, now);
      chosen = choosePeers(members, ask, loadOf);
      members.some((m) => m.peer.id !== ask.peer.id && (m.complete || m.seed));
    } else {
      chosen = choosePeers(view.sample(BLOB, ask, sampleWindow(limit), now).members, ask, loadOf);
    }
    for (const member of chosen) {
      load.record(member.peer.id, now);
    }
    chosenPerWant.push({ chosen, have: ask.have, zone: ask.peer.zone });
  }
  const cpu = process.cpuUsage(before);
  let peers = 0;
  let useful = 0;
  let sameZone = 0;
  let finisher = 0;
  for (const { chosen, have, zone } of chosenPerWant) {
    peers += chosen.length;
    for (const member of chosen) {
      useful += usefulFor(member, have);
      sameZone += member.peer.zone === zone ? 1 : 0;
    }
    finisher += chosen.some((m) => m.complete || m.seed) ? 1 : 0;
  }
  const perPeer = Array.from({ length: size }, (_, i) => loadOf(`p${String(i)}`));
  return {
    cpuUsPerWant: (cpu.user + cpu.system) / wants,
    usefulPerPeer: useful / peers,
    sameZoneShare: sameZone / peers,
    finisherShare: finisher / wants,
    handedOutShare: perPeer.filter((n) => n > 0).length / size,
    maxPerPeer: Math.max(...perPeer),
  };
}

/** The middle value of `values` (the mean of the two middle ones for an even count). */
function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] ?? 0)
    : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

async function main(): Promise<void> {
  const values = readOptions(process.argv.slice(2), USAGE, {
    swarms: { type: 'string', default: '100,300,1000,3000,10000' },
    wants: { type: 'string', default: '2000' },
    limit: { type: 'string', default: '16' },
    askers: { type: 'string', default: 'random' },
    baseline: { type: 'string' },
    rounds: { type: 'string', default: '5' },
  });
  const swarms = String(values.swarms)
    .split(',')
    .map((s) => Number(s));
  const wants = Number(values.wants);
  const limit = Number(values.limit);
  const askers = String(values.askers) as Askers;
  const rounds = Number(values.rounds);
  const problems: string[] = [];
  if (swarms.some((n) => !Number.isInteger(n) || n < 1 || n > 100_000)) {
    problems.push('--swarms takes sizes from 1 to 100000');
  }
  if (!Number.isInteger(wants) || wants < 1 || wants > 1_000_000) {
    problems.push('--wants takes a whole number from 1 to 1000000');
  }
  if (!Number.isInteger(limit) || limit < 1 || limit > 64) {
    problems.push('--limit takes a whole number from 1 to 64');
  }
  if (!ASKERS.includes(askers)) {
    problems.push(`--askers takes one of ${ASKERS.join(', ')}`);
  }
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 100) {
    problems.push('--rounds takes a whole number from 1 to 100');
  }
  exitOnProblems(problems, USAGE);

  const pct = (share: number): string => `${(100 * share).toFixed(0)} %`;
  const rows: string[][] = [];
  for (const size of swarms) {
    const run = { size, wants, limit, askers };
    const whole = measure({ ...run, policy: THIS_BUILD, whole: true });
    const sample = measure({ ...run, policy: THIS_BUILD, whole: false });
    const both = (pick: (f: Figures) => string): string => `${pick(whole)} / ${pick(sample)}`;
    rows.push([
      String(size),
      whole.cpuUsPerWant.toFixed(1),
      sample.cpuUsPerWant.toFixed(1),
      (whole.cpuUsPerWant / sample.cpuUsPerWant).toFixed(1),
      both((f) => f.usefulPerPeer.toFixed(1)),
      both((f) => pct(f.sameZoneShare)),
      both((f) => pct(f.finisherShare)),
      both((f) => pct(f.handedOutShare)),
      both((f) => String(f.maxPerPeer)),
    ]);
  }
  process.stdout.write(
    `Hand-out policy per want, whole swarm ranked / sample ranked: ${String(wants)} wants of limit ${String(limit)} per swarm, ${String(PIECES)} pieces, 3 zones, ${pct(COMPLETE_SHARE)} complete, askers ${askers}\n` +
      `${table(
        [
          'swarm',
          'whole CPU µs/want',
          'sample CPU µs/want',
          'whole / sample',
          'useful pieces per peer',
          'asker’s zone',
          'with a finisher',
          'holders handed out',
          'most hand-outs of one holder',
        ],
        rows,
      )}\n`,
  );
  if (values.baseline === undefined) {
    return;
  }
  const baseline = await baselinePolicy(String(values.baseline));
  const abRows: string[][] = [];
  for (const size of swarms) {
    const run = { size, wants, limit, askers, whole: false };
    const ours: number[] = [];
    const theirs: number[] = [];
    let last: { ours: Figures; theirs: Figures } | undefined;
    const measureOf = (policy: Policy): Figures => measure({ ...run, policy });
    // One unmeasured run each first: this build's code is warm from the table above, the
    // baseline's not yet.
    measureOf(baseline);
    measureOf(THIS_BUILD);
    // Alternating, the baseline first in the first round: the machine’s drift falls on both.
    for (let round = 0; round < rounds; round += 1) {
      const baselineFirst = round % 2 === 0;
      const base = baselineFirst ? measureOf(baseline) : undefined;
      const mine = measureOf(THIS_BUILD);
      const theirsNow = base ?? measureOf(baseline);
      ours.push(mine.cpuUsPerWant);
      theirs.push(theirsNow.cpuUsPerWant);
      last = { ours: mine, theirs: theirsNow };
    }
    const ratio = median(ours) / median(theirs);
    abRows.push([
      String(size),
      median(theirs).toFixed(1),
      median(ours).toFixed(1),
      ratio.toFixed(2),
      last === undefined
        ? '-'
        : `${last.theirs.usefulPerPeer.toFixed(1)} / ${last.ours.usefulPerPeer.toFixed(1)}`,
      last === undefined
        ? '-'
        : `${pct(last.theirs.handedOutShare)} / ${pct(last.ours.handedOutShare)}`,
    ]);
  }
  process.stdout.write(
    `\nSample ranked, the baseline (${String(values.baseline)}) against this build, medians of ${String(rounds)} rounds each, alternating\n` +
      `${table(
        [
          'swarm',
          'baseline CPU µs/want',
          'this build CPU µs/want',
          'this / baseline',
          'useful pieces per peer',
          'holders handed out',
        ],
        abRows,
      )}\n`,
  );
}

await main();
