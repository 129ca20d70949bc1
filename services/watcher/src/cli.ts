#!/usr/bin/env node
/**
 * `shoal-preheat`: ask a watcher for a preheat and follow it, or read a job's status.
 *
 *   shoal-preheat IMAGE [--scope seed|nodes] [--selector k=v,...] [--platform os/arch]... [--wait]
 *   shoal-preheat status JOB_ID
 *   shoal-preheat list
 *
 * The watcher is `--url` or SHOAL_WATCHER_URL (default http://127.0.0.1:65030); the token is
 * `--token` or SHOAL_WATCHER_API_TOKEN. Exit status: 0 done (or queued without --wait), 1 the
 * job failed, 2 a usage or request error.
 */
import { parseArgs } from 'node:util';

const REQUEST_TIMEOUT_MS = 30_000;
const POLL_MS = 1_000;

const usage = `usage:
  shoal-preheat IMAGE [--scope seed|nodes] [--selector k=v,...] [--platform os/arch]... [--wait]
  shoal-preheat status JOB_ID
  shoal-preheat list
options: --url URL (SHOAL_WATCHER_URL), --token TOKEN (SHOAL_WATCHER_API_TOKEN), --timeout SECONDS (with --wait)`;

interface Job {
  readonly id: string;
  readonly state: string;
  readonly blobsDone: number;
  readonly blobsTotal: number;
  readonly nodesDone?: number;
  readonly nodesTotal?: number;
  readonly error?: string;
}

class CliError extends Error {}

async function call(method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
  const base = values.url ?? process.env.SHOAL_WATCHER_URL ?? 'http://127.0.0.1:65030';
  const token = values.token ?? process.env.SHOAL_WATCHER_API_TOKEN;
  const response = await fetch(new URL(path, base), {
    method,
    headers: {
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const answer = (await response.json().catch(() => ({}))) as { error?: string };
  if (!response.ok) {
    throw new CliError(`${response.status}: ${answer.error ?? response.statusText}`);
  }
  return answer;
}

function describe(job: Job): string {
  const nodes =
    job.nodesTotal === undefined ? '' : `, nodes ${job.nodesDone ?? 0}/${job.nodesTotal}`;
  const error = job.error === undefined ? '' : ` (${job.error})`;
  return `${job.id} ${job.state}: blobs ${job.blobsDone}/${job.blobsTotal}${nodes}${error}`;
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    scope: { type: 'string', default: 'seed' },
    selector: { type: 'string' },
    platform: { type: 'string', multiple: true },
    wait: { type: 'boolean', default: false },
    timeout: { type: 'string', default: '3600' },
    url: { type: 'string' },
    token: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

async function main(): Promise<number> {
  const [first, second] = positionals;
  if (values.help || first === undefined) {
    process.stdout.write(`${usage}\n`);
    return values.help ? 0 : 2;
  }
  if (first === 'list') {
    const { jobs } = (await call('GET', '/preheat')) as { jobs: Job[] };
    for (const job of jobs) {
      process.stdout.write(`${describe(job)}\n`);
    }
    return 0;
  }
  if (first === 'status') {
    if (second === undefined) {
      throw new CliError('status needs a job id');
    }
    const job = (await call('GET', `/preheat/${encodeURIComponent(second)}`)) as Job;
    process.stdout.write(`${describe(job)}\n`);
    return job.state === 'failed' ? 1 : 0;
  }
  const selector = Object.fromEntries(
    (values.selector ?? '')
      .split(',')
      .filter((pair) => pair !== '')
      .map((pair) => {
        const eq = pair.indexOf('=');
        if (eq <= 0) {
          throw new CliError(`--selector: "${pair}" is not key=value`);
        }
        return [pair.slice(0, eq), pair.slice(eq + 1)];
      }),
  );
  let job = (await call('POST', '/preheat', {
    image: first,
    scope: values.scope,
    selector,
    ...(values.platform === undefined ? {} : { platforms: values.platform }),
  })) as Job & { duplicate: boolean };
  process.stdout.write(`${describe(job)}${job.duplicate ? ' (already requested)' : ''}\n`);
  if (!values.wait) {
    return 0;
  }
  const deadline = Date.now() + Number(values.timeout) * 1000;
  let last = '';
  while (job.state !== 'done' && job.state !== 'failed') {
    if (Date.now() > deadline) {
      throw new CliError(`still ${job.state} after ${values.timeout} s`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    job = (await call('GET', `/preheat/${job.id}`)) as typeof job;
    const line = describe(job);
    if (line !== last) {
      process.stdout.write(`${line}\n`);
      last = line;
    }
  }
  return job.state === 'done' ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(
      `shoal-preheat: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    process.exit(2);
  },
);
