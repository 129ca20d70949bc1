/**
 * The compose stack validates with docker-compose and holds every service the one-host demo
 * needs, with pinned images; the Grafana dashboard parses and asks only for metrics the
 * services define, so it cannot drift from the code unnoticed.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';

import { requireBinary, run } from '@shoal/testkit';
import { parse } from 'yaml';

import { definedMetrics, REPO_ROOT } from '../src/deploy.js';

interface ComposeService {
  readonly image?: string;
  readonly build?: unknown;
  readonly environment?: Record<string, string | null>;
  readonly ports?: ({ published?: number | string; target?: number } | string)[];
}

const COMPOSE_FILE = join(REPO_ROOT, 'deploy', 'compose', 'compose.yaml');

describe('deploy/compose', () => {
  let services: Record<string, ComposeService>;

  before(async () => {
    const compose = requireBinary('docker-compose');
    const { stdout } = await run(compose, ['-f', COMPOSE_FILE, 'config']);
    services = (parse(stdout) as { services: Record<string, ComposeService> }).services;
  });

  it('validates (docker-compose config -q)', async () => {
    await run(requireBinary('docker-compose'), ['-f', COMPOSE_FILE, 'config', '-q']);
  });

  it('has the whole stack', () => {
    for (const name of [
      'nats',
      'minio',
      'minio-setup',
      'registry',
      'tracker',
      'seedserver',
      'watcher',
      'agent-1',
      'agent-2',
      'prometheus',
      'tempo',
      'grafana',
    ]) {
      assert.ok(services[name] !== undefined, `no service ${name}`);
    }
  });

  it('pins every image to a tag other than latest', () => {
    for (const [name, service] of Object.entries(services)) {
      const image = service.image ?? '';
      const tag = /:([^/:@]+)$/.exec(image)?.[1];
      assert.ok(tag !== undefined, `${name}: ${image} has no tag`);
      assert.notEqual(tag, 'latest', `${name}: ${image}`);
    }
  });

  it('publishes the two agents on different host ports and points them at NATS', () => {
    const published = ['agent-1', 'agent-2'].map((name) => {
      const service = services[name];
      assert.ok(service !== undefined);
      assert.equal(service.environment?.SHOAL_AGENT_LISTEN, '0.0.0.0:65001');
      assert.match(service.environment.SHOAL_NATS_URL ?? '', /^nats:\/\/agent:[^@]+@nats:4222$/);
      const port = service.ports?.find((p) => typeof p !== 'string' && p.target === 65001);
      assert.ok(port !== undefined && typeof port !== 'string', `${name} publishes no mirror`);
      return Number(port.published);
    });
    assert.deepEqual(published, [65001, 65101]);
  });

  it('sends traces to Tempo over OTLP/HTTP', () => {
    for (const name of ['tracker', 'seedserver', 'watcher', 'agent-1', 'agent-2']) {
      const env = services[name]?.environment ?? {};
      assert.equal(env.OTEL_EXPORTER_OTLP_ENDPOINT, 'http://tempo:4318', name);
      assert.equal(env.OTEL_EXPORTER_OTLP_PROTOCOL, 'http/protobuf', name);
      assert.equal(env.OTEL_SERVICE_NAME, `shoal-${name.replace(/-\d$/, '')}`, name);
    }
  });

  it('has the registry notify the watcher with the watcher token', async () => {
    const config = parse(
      await readFile(join(REPO_ROOT, 'deploy', 'compose', 'registry', 'config.yml'), 'utf8'),
    ) as {
      notifications: { endpoints: { url: string; headers: Record<string, string[]> }[] };
    };
    const [endpoint] = config.notifications.endpoints;
    assert.equal(endpoint?.url, 'http://watcher:65030/webhooks/distribution');
    const token = services.watcher?.environment?.SHOAL_WATCHER_WEBHOOK_TOKEN ?? '';
    assert.ok(token !== '');
    assert.deepEqual(endpoint.headers.Authorization, [`Bearer ${token}`]);
  });

  it('has Prometheus scrape every Shoal service', async () => {
    const config = parse(
      await readFile(join(REPO_ROOT, 'deploy', 'compose', 'prometheus', 'prometheus.yml'), 'utf8'),
    ) as { scrape_configs: { static_configs: { targets: string[] }[] }[] };
    const targets = config.scrape_configs.flatMap((job) =>
      job.static_configs.flatMap((group) => group.targets),
    );
    for (const target of [
      'agent-1:65002',
      'agent-2:65002',
      'tracker:65020',
      'seedserver:65010',
      'watcher:65030',
    ]) {
      assert.ok(targets.includes(target), `Prometheus does not scrape ${target}`);
    }
  });
});

describe('Grafana dashboard', () => {
  interface Panel {
    readonly type: string;
    readonly title: string;
    readonly targets?: { expr: string }[];
  }

  let panels: Panel[];

  before(async () => {
    const text = await readFile(join(REPO_ROOT, 'deploy', 'grafana', 'shoal.json'), 'utf8');
    panels = (JSON.parse(text) as { panels: Panel[] }).panels;
  });

  it('answers "is P2P working?"', () => {
    const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)).join('\n');
    assert.match(exprs, /sum by \(source\) \(rate\(shoal_agent_fetched_bytes_total/);
    assert.match(exprs, /1 - .*shoal_agent_fetched_bytes_total\{source="origin"\}/);
    assert.match(exprs, /histogram_quantile\(0\.99, .*shoal_agent_download_duration_seconds/);
    assert.match(exprs, /shoal_agent_verification_failures_total/);
    assert.match(exprs, /shoal_agent_swarm_fallbacks_total/);
  });

  it('asks only for metrics the services define', async () => {
    const defined = await definedMetrics();
    assert.ok(defined.has('shoal_agent_fetched_bytes_total'), 'metric scan found nothing');
    const used = new Set(
      panels
        .flatMap((p) => (p.targets ?? []).map((t) => t.expr))
        .flatMap((expr) => [...expr.matchAll(/\bshoal_[a-z0-9_]+/g)].map((m) => m[0]))
        .map((name) => name.replace(/_(bucket|sum|count)$/, '')),
    );
    assert.ok(used.size > 10);
    for (const name of used) {
      assert.ok(defined.has(name), `${name} is not defined in services/*/src`);
    }
  });
});
