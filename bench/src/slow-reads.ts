#!/usr/bin/env node
/**
 * What reading a slow body costs the agent's piece client, per byte: a server in a process of
 * its own sends bodies a few KiB at a time (as a shaped link hands them over), and this process
 * reads several at once with the raw HTTP client, copying each read into a piece buffer as the
 * piece client does, with and without read pacing (`paceReads`), alternately, in one run. It
 * prints this process's CPU seconds per GiB (from `process.cpuUsage`: the reader's only), the
 * socket reads per MiB, and the ratios paced / unpaced.
 *
 *   npm run slow-reads -w bench -- [--connections 8] [--chunk-kib 4] [--gap-ms 10] [--rounds 3]
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

import { RawHttpClient } from '@shoal/runtime/raw-http';
import { ratio, table } from '@shoal/testkit';

import { exitOnProblems, readOptions, runBench } from './cli.js';

const MiB = 1024 * 1024;

const USAGE = `usage: npm run slow-reads -w bench -- [options]

  --connections N   bodies read at once (default 8, as the agent's piece requests)
  --body-mib S      size of each body, MiB (default 4)
  --chunk-kib K     bytes the server writes at a time, KiB (default 4)
  --gap-ms G        time between two writes on one connection, ms (default 10)
  --rounds R        paced and unpaced rounds, alternating (default 3)
`;

/** The server: every GET gets `size` bytes, `chunk` at a time, `gap` ms apart. */
const SERVER = `
const http = require('node:http');
const [size, chunk, gap] = process.argv.slice(1).map(Number);
const bytes = Buffer.alloc(chunk, 7);
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-length': size });
  let sent = 0;
  const timer = setInterval(() => {
    const n = Math.min(chunk, size - sent);
    res.write(bytes.subarray(0, n));
    sent += n;
    if (sent >= size) { clearInterval(timer); res.end(); }
  }, gap);
  res.on('close', () => clearInterval(timer));
});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
`;

interface Round {
  readonly paced: boolean;
  readonly cpuSeconds: number;
  readonly bytes: number;
  readonly reads: number;
  readonly seconds: number;
}

async function readRound(
  port: number,
  connections: number,
  bodyBytes: number,
  paced: boolean,
): Promise<Round> {
  const client = new RawHttpClient();
  let reads = 0;
  let bytes = 0;
  const started = performance.now();
  const cpu = process.cpuUsage();
  await Promise.all(
    Array.from({ length: connections }, async (_, i) => {
      const piece = Buffer.allocUnsafe(bodyBytes);
      let filled = 0;
      await client.get(
        new URL(`http://127.0.0.1:${port}/piece/${i}`),
        {
          headers: {},
          signal: AbortSignal.timeout(600_000),
          timeoutMs: 15_000,
          timeoutError: () => new Error('silent server'),
          paceReads: paced,
        },
        {
          onHead: () => undefined,
          onBody: (view) => {
            reads += 1;
            filled += view.copy(piece, filled);
          },
        },
      );
      bytes += filled;
    }),
  );
  const used = process.cpuUsage(cpu);
  client.close();
  return {
    paced,
    cpuSeconds: (used.user + used.system) / 1e6,
    bytes,
    reads,
    seconds: (performance.now() - started) / 1000,
  };
}

async function main(): Promise<number> {
  const values = readOptions(process.argv.slice(2), USAGE, {
    connections: { type: 'string', default: '8' },
    'body-mib': { type: 'string', default: '4' },
    'chunk-kib': { type: 'string', default: '4' },
    'gap-ms': { type: 'string', default: '10' },
    rounds: { type: 'string', default: '3' },
  });
  const [connections, bodyMib, chunkKib, gapMs, rounds] = [
    'connections',
    'body-mib',
    'chunk-kib',
    'gap-ms',
    'rounds',
  ].map((name) => Number(values[name]));
  const problems = [connections, bodyMib, chunkKib, gapMs, rounds].some(
    (n) => n === undefined || !Number.isFinite(n) || n <= 0,
  )
    ? ['every option takes a positive number']
    : [];
  exitOnProblems(problems, USAGE);
  const bodyBytes = Math.round((bodyMib ?? 4) * MiB);
  const server = spawn(
    process.execPath,
    ['-e', SERVER, String(bodyBytes), String((chunkKib ?? 4) * 1024), String(gapMs)],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    const lines = createInterface({ input: server.stdout });
    const [first] = (await once(lines, 'line')) as [string];
    const port = Number(first);
    const results: Round[] = [];
    for (let r = 0; r < (rounds ?? 3); r++) {
      // Alternating, unpaced first in odd rounds: the machine's load hits both alike.
      for (const paced of r % 2 === 0 ? [false, true] : [true, false]) {
        results.push(await readRound(port, connections ?? 8, bodyBytes, paced));
      }
    }
    const perGiB = (x: Round): number => x.cpuSeconds / (x.bytes / 1024 ** 3);
    const readsPerMiB = (x: Round): number => x.reads / (x.bytes / MiB);
    const mean = (paced: boolean, f: (x: Round) => number): number => {
      const of = results.filter((x) => x.paced === paced).map(f);
      return of.reduce((a, b) => a + b, 0) / of.length;
    };
    process.stdout.write(
      `Slow reads: ${connections} bodies of ${bodyMib} MiB at once, ${chunkKib} KiB every ${gapMs} ms each ` +
        `(${(((chunkKib ?? 4) * 1024 * (connections ?? 8) * 1000) / (gapMs ?? 10) / 1e6).toFixed(1)} MB/s in all)\n\n` +
        table(
          ['round', 'reads', 'time', 'MB/s', 'reader CPU s/GiB', 'reads per MiB'],
          results.map((x, i) => [
            `${Math.floor(i / 2) + 1} ${x.paced ? 'paced' : 'unpaced'}`,
            String(x.reads),
            `${x.seconds.toFixed(2)} s`,
            (x.bytes / x.seconds / 1e6).toFixed(2),
            perGiB(x).toFixed(2),
            readsPerMiB(x).toFixed(1),
          ]),
        ) +
        `\n\npaced / unpaced: CPU per GiB ${ratio(mean(true, perGiB) / mean(false, perGiB))}, ` +
        `reads ${ratio(mean(true, readsPerMiB) / mean(false, readsPerMiB))}, ` +
        `time ${ratio(mean(true, (x) => x.seconds) / mean(false, (x) => x.seconds))}\n`,
    );
    return 0;
  } finally {
    server.kill();
  }
}

await runBench(main);
