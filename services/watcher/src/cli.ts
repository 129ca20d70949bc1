#!/usr/bin/env node
/**
 * `shoal-preheat`: ask a watcher for a preheat and follow it, or read jobs' status. Every
 * error is one line on stderr with one of the exit codes in `usage` (also in the README).
 */
import { CliError, parseCliArgs, runCli, unreachableReason, USAGE_EXIT } from '@shoal/runtime/cli';

import { failureLines, jobBlock, jobLine, type ApiJob } from './cli/format.js';

const TOOL = 'shoal-preheat';
const REQUEST_TIMEOUT_MS = 30_000;
const POLL_MS = 1_000;

/** Exit codes, as `--help` and the README list them. */
const EXIT = {
  ok: 0,
  jobFailed: 1,
  usage: USAGE_EXIT,
  unreachable: 3,
  refused: 4,
  waitTimedOut: 5,
  /** Anything unforeseen (a bug): still one line, never a stack trace. */
  internal: 70,
} as const;

const usage = `usage:
  shoal-preheat IMAGE [--scope seed|nodes] [--selector k=v,...] [--platform os/arch]... [--wait [--timeout SECONDS]]
  shoal-preheat status JOB_ID [--json]
  shoal-preheat list [--limit N] [--json]
options:
  --url URL        the watcher (SHOAL_WATCHER_URL; default http://127.0.0.1:65030)
  --token TOKEN    the API's bearer token (SHOAL_WATCHER_API_TOKEN)
  --timeout SECONDS  with --wait: give up after this long (default 3600)
  --json           print the watcher's answer as JSON
  -h, --help       this text
output: one line per job (id, state, image, seed bytes done/total, nodes and their bytes,
  ETA while running, failures); status adds failures by node and blob.
exit codes:
  0  done, listed, or queued (without --wait)
  1  the job failed (status or --wait)
  2  usage error: unknown option, bad or missing argument
  3  the watcher could not be reached (refused, unknown host, TLS, no answer in 30 s)
  4  the watcher refused the request (wrong token, no such job, a bad image), with its reason
  5  --wait gave up after --timeout with the job still running
  70 an unexpected error (a bug: please report the line it printed)`;

interface Args {
  readonly positionals: readonly string[];
  readonly scope: 'seed' | 'nodes';
  readonly selector: Record<string, string>;
  readonly platforms: readonly string[] | undefined;
  readonly wait: boolean;
  readonly timeoutS: number;
  readonly limit: number | undefined;
  readonly json: boolean;
  readonly base: URL;
  readonly token: string | undefined;
  readonly help: boolean;
}

function usageError(message: string): CliError {
  return new CliError(message, EXIT.usage);
}

function parse(argv: readonly string[]): Args {
  const { values, positionals } = parseCliArgs(TOOL, {
    args: [...argv],
    allowPositionals: true,
    options: {
      scope: { type: 'string', default: 'seed' },
      selector: { type: 'string' },
      platform: { type: 'string', multiple: true },
      wait: { type: 'boolean', default: false },
      timeout: { type: 'string', default: '3600' },
      limit: { type: 'string' },
      json: { type: 'boolean', default: false },
      url: { type: 'string' },
      token: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.scope !== 'seed' && values.scope !== 'nodes') {
    throw usageError(`--scope must be seed or nodes, not "${values.scope}"`);
  }
  const timeoutS = Number(values.timeout);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    throw usageError(`--timeout must be a number of seconds above 0, not "${values.timeout}"`);
  }
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1 || limit > 500)) {
    throw usageError(`--limit must be a whole number from 1 to 500, not "${values.limit ?? ''}"`);
  }
  const selector: Record<string, string> = {};
  for (const pair of (values.selector ?? '').split(',').filter((p) => p !== '')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) {
      throw usageError(`--selector: "${pair}" is not key=value`);
    }
    selector[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const url = values.url ?? process.env.SHOAL_WATCHER_URL ?? 'http://127.0.0.1:65030';
  let base: URL;
  try {
    base = new URL(url);
  } catch {
    throw usageError(`"${url}" is not a URL (--url, SHOAL_WATCHER_URL)`);
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') {
    throw usageError(`"${url}" is not an http(s) URL (--url, SHOAL_WATCHER_URL)`);
  }
  return {
    positionals,
    scope: values.scope,
    selector,
    platforms: values.platform,
    wait: values.wait,
    timeoutS,
    limit,
    json: values.json,
    base,
    token: values.token ?? process.env.SHOAL_WATCHER_API_TOKEN,
    help: values.help,
  };
}

/** One API call; a CliError (3 unreachable, 4 refused) for anything but a JSON 2xx. */
async function call(
  args: Args,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
): Promise<unknown> {
  const url = new URL(path, args.base);
  let response: Response;
  try {
    response = await fetch(url, {
      method,
      headers: {
        ...(args.token === undefined ? {} : { authorization: `Bearer ${args.token}` }),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (error) {
    throw new CliError(
      `cannot reach the watcher at ${args.base.origin}: ${unreachableReason(error)}`,
      EXIT.unreachable,
    );
  }
  let answer: unknown;
  try {
    answer = await response.json();
  } catch (error) {
    if (error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError')) {
      throw new CliError(`the watcher at ${args.base.origin} stopped answering`, EXIT.unreachable);
    }
    throw new CliError(
      `${args.base.origin} answered ${String(response.status)} without JSON: is it a Shoal watcher?`,
      EXIT.refused,
    );
  }
  if (!response.ok) {
    const reason = (answer as { error?: unknown }).error;
    throw new CliError(
      `the watcher refused ${method} ${path} (${String(response.status)}): ${typeof reason === 'string' ? reason : response.statusText}`,
      EXIT.refused,
    );
  }
  return answer;
}

function print(text: string): void {
  process.stdout.write(`${text}\n`);
}

async function list(args: Args): Promise<number> {
  const query = args.limit === undefined ? '' : `?limit=${String(args.limit)}`;
  const { jobs } = (await call(args, 'GET', `/preheat${query}`)) as { jobs: ApiJob[] };
  if (args.json) {
    print(JSON.stringify(jobs, null, 2));
  } else if (jobs.length === 0) {
    print('no preheat jobs');
  } else {
    jobs.forEach((job) => print(jobLine(job)));
  }
  return EXIT.ok;
}

async function status(args: Args, id: string): Promise<number> {
  const job = (await call(args, 'GET', `/preheat/${encodeURIComponent(id)}`)) as ApiJob;
  print(args.json ? JSON.stringify(job, null, 2) : jobBlock(job));
  return job.state === 'failed' ? EXIT.jobFailed : EXIT.ok;
}

async function preheat(args: Args, image: string): Promise<number> {
  let job = (await call(args, 'POST', '/preheat', {
    image,
    scope: args.scope,
    selector: args.selector,
    ...(args.platforms === undefined ? {} : { platforms: args.platforms }),
  })) as ApiJob & { duplicate?: boolean };
  print(`${jobLine(job)}${job.duplicate === true ? ' (already requested)' : ''}`);
  if (!args.wait) {
    return EXIT.ok;
  }
  const deadline = Date.now() + args.timeoutS * 1000;
  let last = '';
  while (job.state !== 'done' && job.state !== 'failed') {
    if (Date.now() > deadline) {
      throw new CliError(
        `job ${job.id} still ${job.state} after ${String(args.timeoutS)} s (shoal-preheat status ${job.id} follows it)`,
        EXIT.waitTimedOut,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    job = (await call(args, 'GET', `/preheat/${encodeURIComponent(job.id)}`)) as ApiJob;
    const line = jobLine(job);
    if (line !== last) {
      print(line);
      last = line;
    }
  }
  failureLines(job).forEach(print);
  return job.state === 'done' ? EXIT.ok : EXIT.jobFailed;
}

async function main(): Promise<number> {
  const args = parse(process.argv.slice(2));
  const [first, ...rest] = args.positionals;
  if (args.help) {
    print(usage);
    return EXIT.ok;
  }
  if (first === undefined) {
    throw usageError('name an image, or status JOB_ID, or list (shoal-preheat --help)');
  }
  if (first === 'list') {
    if (rest.length > 0) {
      throw usageError(`list takes no argument, got "${rest.join(' ')}"`);
    }
    return list(args);
  }
  if (first === 'status') {
    if (rest.length !== 1 || rest[0] === undefined) {
      throw usageError('status takes one job id');
    }
    return status(args, rest[0]);
  }
  if (rest.length > 0) {
    throw usageError(`one image at a time, got "${args.positionals.join(' ')}"`);
  }
  return preheat(args, first);
}

await runCli(TOOL, main, EXIT.internal);
