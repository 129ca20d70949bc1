#!/usr/bin/env node
/**
 * `shoal-doctor`: is Shoal working on this node? Run with the agent's environment (in its pod:
 * `kubectl -n shoal exec POD -- node services/agent/dist/src/doctor.js`, or on the node with
 * the same variables). It checks the agent's configuration, containerd's config_path, each mirrored
 * registry's hosts.toml, the mirror, an optional test resolve, NATS and the swarm, and the
 * cache's disk, and prints a table with the fix for each problem.
 *
 *   shoal-doctor [--containerd-config PATH] [--image REGISTRY/REPO:TAG] [--json]
 *
 * Every error is one line on stderr; the exit codes are in `usage` (and the README).
 */
import { ConfigError, urlHost } from '@shoal/runtime';
import { parseCliArgs, runCli, USAGE_EXIT } from '@shoal/runtime/cli';

import { loadAgentConfig } from './config.js';
import {
  checkContainerdConfig,
  checkDisk,
  checkHostsFiles,
  checkMirror,
  checkResolve,
  checkSwarm,
  CONTAINERD_CONFIGS,
  type CheckResult,
} from './doctor/checks.js';
import { formatReport } from './doctor/report.js';

const TOOL = 'shoal-doctor';
/** Exit codes, as `--help` and the README list them. */
const EXIT = { ok: 0, checkFailed: 1, usage: USAGE_EXIT, internal: 70 } as const;
const usage = `usage: shoal-doctor [--containerd-config PATH] [--image REGISTRY/REPO:TAG] [--json]
exit codes:
  0  nothing failed (warnings allowed)
  1  a check failed (the table says which, and the fix)
  2  usage error: unknown option, unexpected argument
  70 an unexpected error (a bug: please report the line it printed)`;

async function diagnose(options: {
  containerdConfig: string | undefined;
  image: string | undefined;
}): Promise<CheckResult[]> {
  let config;
  try {
    config = loadAgentConfig(process.env);
  } catch (error) {
    if (!(error instanceof ConfigError)) {
      throw error;
    }
    return [
      {
        check: 'agent configuration',
        status: 'fail',
        detail: error.problems.join('; '),
        fix: "fix these variables in the agent's environment (its ConfigMap and DaemonSet)",
      },
    ];
  }
  const results: CheckResult[] = [
    {
      check: 'agent configuration',
      status: 'ok',
      detail: `mirrors ${config.SHOAL_AGENT_REGISTRIES.map((r) => r.host).join(', ')}`,
    },
  ];
  const { host, port } = config.SHOAL_AGENT_LISTEN;
  const mirrorHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  const mirrorUrl = `http://${urlHost(mirrorHost)}:${String(port)}`;
  results.push(
    await checkContainerdConfig(
      config,
      options.containerdConfig === undefined ? CONTAINERD_CONFIGS : [options.containerdConfig],
    ),
  );
  results.push(...(await checkHostsFiles(config, port)));
  const mirror = await checkMirror(mirrorUrl, config.SHOAL_AGENT_AUTHZ_TIMEOUT_MS);
  results.push(...mirror.results);
  if (options.image !== undefined) {
    results.push(await checkResolve(mirrorUrl, options.image, config.SHOAL_AGENT_REGISTRIES));
  }
  results.push(...(await checkSwarm(config, mirror.swarm)));
  results.push(await checkDisk(config));
  return results;
}

async function main(): Promise<number> {
  const { values } = parseCliArgs(TOOL, {
    options: {
      'containerd-config': { type: 'string' },
      image: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: false,
  });
  if (values.help === true) {
    process.stdout.write(`${usage}\n`);
    return EXIT.ok;
  }
  const results = await diagnose({
    containerdConfig: values['containerd-config'],
    image: values.image,
  });
  process.stdout.write(
    values.json === true ? `${JSON.stringify(results, null, 2)}\n` : formatReport(results),
  );
  return results.some((r) => r.status === 'fail') ? EXIT.checkFailed : EXIT.ok;
}

await runCli(TOOL, main, EXIT.internal);
