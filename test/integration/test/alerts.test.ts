/**
 * Shoal's alerts: the rules file is valid PromQL to promtool, its unit tests (each alert fires
 * on the series that should set it off, and not on the others) pass, the Prometheus Operator
 * copy in deploy/k8s carries the same groups, and every Shoal metric the rules use is one the
 * services really export (read from the /metrics of running processes).
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  requireBinary,
  run,
  startNats,
  startRegistry,
  type NatsServer,
  type Registry,
  type ServiceProcess,
} from '@shoal/testkit';
import { parse } from 'yaml';

import { REPO_ROOT } from '../src/deploy.js';
import { startOneOfEach } from '../src/swarm.js';

const RULES_DIR = join(REPO_ROOT, 'deploy', 'prometheus');
const RULES = join(RULES_DIR, 'shoal-rules.yaml');

interface RulesFile {
  groups: { name: string; rules: { alert?: string; expr: string }[] }[];
}

/** The Shoal metric names an expression uses, with `(a|b)` alternatives spelled out. */
function metricNames(expr: string): string[] {
  const names: string[] = [];
  for (const match of expr.matchAll(/shoal_(?:\(([a-z|]+)\)_)?([a-z0-9_]*[a-z0-9])/g)) {
    const [whole, alternatives, rest] = match;
    if (alternatives === undefined) {
      names.push(whole);
    } else {
      names.push(...alternatives.split('|').map((a) => `shoal_${a}_${rest ?? ''}`));
    }
  }
  return names;
}

describe('alerts', () => {
  let nats: NatsServer;
  let registry: Registry;
  const services: ServiceProcess[] = [];

  before(async () => {
    nats = await startNats();
    registry = await startRegistry();
    services.push(...(await startOneOfEach(nats.url, registry)));
  });

  after(async () => {
    for (const service of services) {
      await service.stop();
    }
    await registry.stop();
    await nats.stop();
  });

  it('are valid rules, and pass their promtool unit tests', async () => {
    const promtool = requireBinary('promtool');
    const check = await run(promtool, ['check', 'rules', RULES]);
    assert.match(check.stdout + check.stderr, /SUCCESS: 11 rules found/);
    const tests = await run(promtool, ['test', 'rules', join(RULES_DIR, 'shoal-rules.test.yaml')]);
    assert.match(tests.stdout + tests.stderr, /SUCCESS/);
  });

  it('are the same in the PrometheusRule of deploy/k8s', async () => {
    const plain = parse(await readFile(RULES, 'utf8')) as RulesFile;
    const operator = parse(
      await readFile(
        join(REPO_ROOT, 'deploy', 'k8s', 'components', 'monitoring', 'prometheusrule.yaml'),
        'utf8',
      ),
    ) as { kind: string; spec: RulesFile };
    assert.equal(operator.kind, 'PrometheusRule');
    assert.deepEqual(operator.spec.groups, plain.groups);
  });

  it('use only metrics the services export', async () => {
    const exported = new Set<string>();
    for (const service of services) {
      const text = await (await fetch(`${service.url}/metrics`)).text();
      for (const match of text.matchAll(/^# TYPE (\S+) /gm)) {
        exported.add(match[1] ?? '');
      }
    }
    const plain = parse(await readFile(RULES, 'utf8')) as RulesFile;
    const used = plain.groups.flatMap((g) => g.rules.flatMap((r) => metricNames(r.expr)));
    assert.ok(used.length >= 10, `found ${String(used.length)} metric uses`);
    for (const name of used) {
      assert.ok(exported.has(name), `${name} is used by an alert but no service exports it`);
    }
  });
});
