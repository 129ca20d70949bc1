#!/usr/bin/env node
/**
 * The tracker's hand-out policy in-process, without NATS: for swarms of several sizes, the CPU
 * a want costs when the policy ranks the whole swarm (what the tracker did before it sampled)
 * against ranking the sample of holders it takes now (`SwarmView.sample`), in the same run,
 * and what each hands out (useful pieces per peer, the asker's zone, someone who can finish
 * the blob, how evenly hand-outs fall on the holders). Reproducible: the swarm comes from a
 * seeded generator.
 *
 *   node bench/dist/src/sim/handout-cost.js [--swarms 100,1000,10000] [--wants 2000] [--limit 16]
 */
import { LoadTracker } from '@shoal/tracker/handout/load';
import { choosePeers, sampleWindow, type SwarmMember } from '@shoal/tracker/handout/policy';
import { SwarmView } from '@shoal/tracker/swarm/view';
import type { PieceRanges } from '@shoal/proto';
import { table } from '@shoal/testkit';

import { exitOnProblems, readOptions, seededRandom } from '../cli.js';
import { heldRanges } from './stats.js';

const USAGE = `usage: node bench/dist/src/sim/handout-cost.js [options]

  --swarms LIST   swarm sizes (default 100,300,1000,3000,10000)
  --wants N       wants answered per swarm and way (default 2000)
  --limit N       peers asked for per want (default 16, the agent's)
`;

const PIECES = 256;
const ZONES = ['zone-a', 'zone-b', 'zone-c'];
/** Share of members that hold the whole blob; the rest hold a random part of it. */
const COMPLETE_SHARE = 0.1;
const BLOB = `sha256:${'ab'.repeat(32)}`;

/** Random pieces, each held with probability `share`, as the sorted ranges messages carry. */
function randomRanges(next: () => number, share: number): PieceRanges {
  return heldRanges(Uint8Array.from({ length: PIECES }, () => (next() < share ? 1 : 0)));
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

/** Answers `wants` wants on a fresh swarm of `size`, ranking all of it or a sample. */
function measure(size: number, wants: number, limit: number, whole: boolean): Figures {
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
    const pieces: PieceRanges = complete ? [[0, PIECES]] : randomRanges(next, next());
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
  const load = new LoadTracker(10_000);
  const loadOf = (peer: string): number => load.load(peer, now);
  const chosenPerWant: { chosen: SwarmMember[]; have: PieceRanges; zone: string }[] = [];
  const before = process.cpuUsage();
  for (let w = 0; w < wants; w++) {
    const asker = w % size;
    const ask = {
      peer: { id: `p${String(asker)}`, url: 'http://peer.sim:65002', zone: ZONES[asker % 3] ?? '' },
      have: haves[asker] ?? [],
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

function main(): void {
  const values = readOptions(process.argv.slice(2), USAGE, {
    swarms: { type: 'string', default: '100,300,1000,3000,10000' },
    wants: { type: 'string', default: '2000' },
    limit: { type: 'string', default: '16' },
  });
  const swarms = String(values.swarms)
    .split(',')
    .map((s) => Number(s));
  const wants = Number(values.wants);
  const limit = Number(values.limit);
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
  exitOnProblems(problems, USAGE);

  const pct = (share: number): string => `${(100 * share).toFixed(0)} %`;
  const rows: string[][] = [];
  for (const size of swarms) {
    const whole = measure(size, wants, limit, true);
    const sample = measure(size, wants, limit, false);
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
    `Hand-out policy per want, whole swarm ranked / sample ranked: ${String(wants)} wants of limit ${String(limit)} per swarm, ${String(PIECES)} pieces, 3 zones, ${pct(COMPLETE_SHARE)} complete\n` +
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
}

main();
