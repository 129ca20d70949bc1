#!/usr/bin/env node
/**
 * What grew between two V8 heap snapshots of one process (`.heapsnapshot` files, as the soak
 * writes with `--heap-snapshots DIR`): objects counted by kind, the kinds whose count or size
 * grew most first. A snapshot is taken after a full collection, so it holds live objects only:
 * a kind that keeps growing between an early and a late snapshot is what a leak keeps alive.
 *
 * Kinds: the constructor's name (`Map`, `SeedBlob`, `Array`); plain objects by their first
 * property names (`Object {peer,pieces,complete}`), which tells the tables' entries apart;
 * strings by their first characters with hex digits masked (`sha256:xxxx`), which tells
 * digests, tokens and peer ids apart.
 *
 *   node bench/dist/src/heap-diff.js BEFORE.heapsnapshot AFTER.heapsnapshot [--top 25]
 */
import { readFile } from 'node:fs/promises';

import { mib, table } from '@shoal/testkit';

import { readOptions, runBench } from './cli.js';

const USAGE = `usage: node bench/dist/src/heap-diff.js BEFORE.heapsnapshot AFTER.heapsnapshot [--top N]
`;

/** The parts of the `.heapsnapshot` format read here. */
interface HeapSnapshotFile {
  readonly snapshot: {
    readonly meta: {
      readonly node_fields: readonly string[];
      readonly node_types: readonly [readonly string[], ...unknown[]];
      readonly edge_fields: readonly string[];
      readonly edge_types: readonly [readonly string[], ...unknown[]];
    };
  };
  readonly nodes: readonly number[];
  readonly edges: readonly number[];
  readonly strings: readonly string[];
}

/** Objects of one kind: how many, and their own bytes. */
interface Tally {
  count: number;
  bytes: number;
}

/** Property names that say nothing about what an object is for. */
const HIDDEN_PROPERTIES = new Set(['__proto__', 'map', 'properties', 'elements']);

/** Counts a snapshot's objects by kind. */
export function tallyHeap(file: HeapSnapshotFile): Map<string, Tally> {
  const { meta } = file.snapshot;
  const nodeFields = meta.node_fields.length;
  const edgeFields = meta.edge_fields.length;
  const typeAt = meta.node_fields.indexOf('type');
  const nameAt = meta.node_fields.indexOf('name');
  const sizeAt = meta.node_fields.indexOf('self_size');
  const edgeCountAt = meta.node_fields.indexOf('edge_count');
  const edgeTypeAt = meta.edge_fields.indexOf('type');
  const edgeNameAt = meta.edge_fields.indexOf('name_or_index');
  const nodeTypes = meta.node_types[0];
  const propertyType = meta.edge_types[0].indexOf('property');
  const tallies = new Map<string, Tally>();
  let edge = 0;
  for (let node = 0; node < file.nodes.length; node += nodeFields) {
    const type = nodeTypes[file.nodes[node + typeAt] ?? 0] ?? '?';
    const name = file.strings[file.nodes[node + nameAt] ?? 0] ?? '';
    const size = file.nodes[node + sizeAt] ?? 0;
    const edges = file.nodes[node + edgeCountAt] ?? 0;
    let kind: string;
    if (type === 'string' || type === 'concatenated string' || type === 'sliced string') {
      kind = `string "${name.slice(0, 12).replace(/[0-9a-f]/g, 'x')}"`;
    } else if (type === 'object' && name === 'Object') {
      const properties: string[] = [];
      for (let k = 0; k < edges && properties.length < 4; k += 1) {
        const at = edge + k * edgeFields;
        if (file.edges[at + edgeTypeAt] === propertyType) {
          const property = file.strings[file.edges[at + edgeNameAt] ?? 0] ?? '';
          if (!HIDDEN_PROPERTIES.has(property)) {
            properties.push(property);
          }
        }
      }
      kind = `Object {${properties.join(',')}}`;
    } else {
      kind = `${type} ${name.slice(0, 40)}`;
    }
    edge += edges * edgeFields;
    const tally = tallies.get(kind) ?? { count: 0, bytes: 0 };
    tally.count += 1;
    tally.bytes += size;
    tallies.set(kind, tally);
  }
  return tallies;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const files = argv.filter((arg) => !arg.startsWith('--') && !/^\d+$/.test(arg));
  const values = readOptions(
    argv.filter((arg) => !files.includes(arg)),
    USAGE,
    { top: { type: 'string', default: '25' } },
  );
  const top = Number(values.top);
  const [beforePath, afterPath] = files;
  if (files.length !== 2 || beforePath === undefined || afterPath === undefined) {
    process.stderr.write(USAGE);
    return 2;
  }
  const read = async (path: string): Promise<Map<string, Tally>> =>
    tallyHeap(JSON.parse(await readFile(path, 'utf8')) as HeapSnapshotFile);
  const before = await read(beforePath);
  const after = await read(afterPath);
  const total = (tallies: Map<string, Tally>): Tally =>
    [...tallies.values()].reduce(
      (sum, t) => ({ count: sum.count + t.count, bytes: sum.bytes + t.bytes }),
      {
        count: 0,
        bytes: 0,
      },
    );
  const kinds = new Set([...before.keys(), ...after.keys()]);
  const rows = [...kinds]
    .map((kind) => {
      const a = before.get(kind) ?? { count: 0, bytes: 0 };
      const b = after.get(kind) ?? { count: 0, bytes: 0 };
      return { kind, a, b, grew: b.bytes - a.bytes };
    })
    .sort((x, y) => y.grew - x.grew)
    .slice(0, top);
  const [tb, ta] = [total(before), total(after)];
  process.stdout.write(
    `heap: ${mib(tb.bytes)} in ${tb.count} objects -> ${mib(ta.bytes)} in ${ta.count} objects\n` +
      `${table(
        ['kind', 'count before', 'count after', 'bytes before', 'bytes after', 'grew'],
        rows.map(({ kind, a, b, grew }) => [
          kind,
          String(a.count),
          String(b.count),
          mib(a.bytes),
          mib(b.bytes),
          `${grew >= 0 ? '+' : '-'}${(Math.abs(grew) / 1024).toFixed(1)} KiB`,
        ]),
      )}\n`,
  );
  return 0;
}

await runBench(main);
