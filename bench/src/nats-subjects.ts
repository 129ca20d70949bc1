#!/usr/bin/env node
/**
 * What a nats-server holds in memory per subject of a stream shaped like `SHOAL_SWARM` (one
 * message per subject, a subject per blob and peer, a 227-byte have): the server's resident
 * memory before and after publishing `--subjects` distinct subjects, and after `--settle-s`
 * seconds (block caches expire). The deploy files size NATS's memory limit from it
 * (deploy/k8s/base/nats/statefulset.yaml; test/integration/test/deploy-settings.test.ts).
 *
 *   npm run nats-subjects -w bench -- --subjects 1200000
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';

import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { STREAMS } from '@shoal/proto';
import { startNats } from '@shoal/testkit';

import { exitOnProblems, readOptions, runBench } from './cli.js';

const USAGE = `usage: npm run nats-subjects -w bench -- [--subjects N] [--settle-s S]
  --subjects N   distinct subjects to publish (default 400000)
  --settle-s S   seconds to wait before the last reading (default 15)
`;

const MiB = 1024 * 1024;

async function residentBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${String(pid)}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? NaN) * 1024;
}

async function main(): Promise<number> {
  const values = readOptions(process.argv.slice(2), USAGE, {
    subjects: { type: 'string', default: '400000' },
    'settle-s': { type: 'string', default: '15' },
  });
  const subjects = Number(values.subjects);
  const settleS = Number(values['settle-s']);
  const problems: string[] = [];
  if (!Number.isInteger(subjects) || subjects < 1 || subjects > STREAMS.swarm.maxMsgs) {
    problems.push(`--subjects takes a whole number from 1 to ${String(STREAMS.swarm.maxMsgs)}`);
  }
  if (!Number.isFinite(settleS) || settleS < 0) {
    problems.push('--settle-s takes a number of seconds');
  }
  exitOnProblems(problems, USAGE);

  const nats = await startNats();
  try {
    const pid = nats.process.child.pid;
    if (pid === undefined) {
      throw new Error('nats-server has no pid');
    }
    const nc = await connect({ servers: nats.url, timeout: 5_000 });
    try {
      const jsm = await jetstreamManager(nc);
      // The swarm stream's own limits: one message per subject, its bytes and count.
      await jsm.streams.add({
        name: STREAMS.swarm.name,
        subjects: [...STREAMS.swarm.subjects],
        max_msgs_per_subject: 1,
        max_bytes: STREAMS.swarm.maxBytes,
        max_msgs: STREAMS.swarm.maxMsgs,
      });
      const before = await residentBytes(pid);
      const have = randomBytes(227);
      for (let i = 0; i < subjects; i += 1) {
        const blob = randomBytes(32).toString('hex');
        const peer = `node-${String(i % 10_000).padStart(5, '0')}`;
        nc.publish(`shoal.swarm.v1.have.sha256.${blob}.${peer}`, have);
        if (i % 10_000 === 9_999) {
          await nc.flush();
        }
      }
      await nc.flush();
      const held = (await jsm.streams.info(STREAMS.swarm.name)).state.num_subjects ?? 0;
      const after = await residentBytes(pid);
      await new Promise((resolve) => setTimeout(resolve, settleS * 1000));
      const settled = await residentBytes(pid);
      const version = (await (await fetch(`${nats.monitorUrl}/varz`)).json()) as {
        version: string;
      };
      process.stdout.write(
        [
          `nats-server ${version.version}, ${String(held)} subjects held`,
          `resident before ${(before / MiB).toFixed(0)} MiB, after ${(after / MiB).toFixed(0)} MiB, ` +
            `after ${String(settleS)} s ${(settled / MiB).toFixed(0)} MiB`,
          `per subject: ${((settled - before) / held).toFixed(0)} bytes`,
          '',
        ].join('\n'),
      );
    } finally {
      await nc.close();
    }
  } finally {
    await nats.stop();
  }
  return 0;
}

await runBench(main);
