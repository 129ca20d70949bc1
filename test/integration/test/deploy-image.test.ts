/**
 * deploy/Dockerfile ships what the deploy files run, and runs it the way they expect, checked
 * against the build output (`npm run build`) without building the image: its base is a Node
 * LTS line the project supports; it runs as a user other than root; every script a manifest,
 * the compose file or the docs run is in a workspace the image ships; the workspaces it ships
 * bring every library they import, and their compiled code imports nothing but Node's own
 * modules and their production dependencies (the image installs no development dependency,
 * so importing one would fail only in the image). And with `node` as the container's first
 * process (the image's ENTRYPOINT, no init in between), SIGTERM reaches the agent: run as
 * process 1 of a PID namespace of its own, where the kernel delivers only signals it handles,
 * it stops cleanly and takes its containerd hosts files with it.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import {
  AGENT_MAIN,
  makeTempDir,
  requireBinary,
  serviceNodeFlags,
  startProcess,
  waitFor,
} from '@shoal/testkit';

import { REPO_ROOT } from '../src/deploy.js';

const DOCKERFILE = join(REPO_ROOT, 'deploy', 'Dockerfile');

/** The default value of a Dockerfile `ARG`, split on spaces. */
function argList(dockerfile: string, name: string): string[] {
  const value = new RegExp(`^ARG ${name}=(?:"([^"]*)"|(\\S*))$`, 'm').exec(dockerfile);
  assert.ok(value !== null, `deploy/Dockerfile has no ARG ${name}`);
  return (value[1] ?? value[2] ?? '').split(/\s+/).filter((w) => w !== '');
}

interface Manifest {
  readonly name: string;
  readonly dependencies?: Record<string, string>;
  readonly devDependencies?: Record<string, string>;
  readonly exports?: Record<string, { default?: string }>;
  readonly bin?: Record<string, string>;
}

async function manifest(workspace: string): Promise<Manifest> {
  return JSON.parse(await readFile(join(REPO_ROOT, workspace, 'package.json'), 'utf8')) as Manifest;
}

/** The package a bare import specifier names (`@scope/name/sub` -> `@scope/name`). */
function packageOf(specifier: string): string {
  const parts = specifier.split('/');
  return (specifier.startsWith('@') ? parts.slice(0, 2) : parts.slice(0, 1)).join('/');
}

/** Every bare module specifier the compiled files under `dir` import, with a file of each. */
async function bareImports(dir: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  const files = (await readdir(dir, { recursive: true })).filter((f) => f.endsWith('.js'));
  for (const file of files) {
    const text = await readFile(join(dir, file), 'utf8');
    const specifiers = [
      ...text.matchAll(/^\s*(?:import|export)\b[^'"]*?\bfrom\s*['"]([^'"]+)['"]/gm),
      ...text.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm),
      ...text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g),
    ].map((m) => m[1] ?? '');
    for (const specifier of specifiers) {
      if (!specifier.startsWith('.') && !specifier.startsWith('/')) {
        found.set(specifier, join(dir, file));
      }
    }
  }
  return found;
}

describe('deploy/Dockerfile', () => {
  it('builds on a Node LTS line the project supports and runs as a user other than root', async () => {
    const dockerfile = await readFile(DOCKERFILE, 'utf8');
    const [base = ''] = argList(dockerfile, 'NODE_IMAGE');
    const version = /^node:(\d+)\.(\d+)\.(\d+)-/.exec(base);
    assert.ok(version !== null, `the base ${base} is not a pinned node:<x.y.z>-... image`);
    const major = Number(version[1]);
    // Even majors are Node's long-term support lines.
    assert.equal(major % 2, 0, `Node ${String(major)} is not an LTS line`);
    const engines = (
      JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as {
        engines: { node: string };
      }
    ).engines.node;
    const minimum = /^>=(\d+)\.(\d+)\.(\d+)$/.exec(engines);
    assert.ok(minimum !== null, engines);
    const at = (v: RegExpExecArray): number[] => [1, 2, 3].map((i) => Number(v[i]));
    const [a, b] = [at(version), at(minimum)];
    const newer = a.findIndex((x, i) => x !== b[i]);
    assert.ok(
      newer === -1 || (a[newer] ?? 0) > (b[newer] ?? 0),
      `${base} is older than ${engines}`,
    );
    // The last USER of the file is the runtime stage's.
    const user = [...dockerfile.matchAll(/^USER (\d+)(?::(\d+))?$/gm)].at(-1);
    assert.ok(user !== undefined, 'the image runs as root (no numeric USER)');
    assert.notEqual(user[1], '0');
    assert.match(dockerfile, /^ENTRYPOINT \["node"\]$/m);
  });

  it('names one Node base everywhere: the Dockerfile, the scripts and the docs', async () => {
    const [base = ''] = argList(await readFile(DOCKERFILE, 'utf8'), 'NODE_IMAGE');
    const seen = new Map<string, string>();
    for (const dir of ['deploy', 'docs', 'scripts']) {
      for (const file of await readdir(join(REPO_ROOT, dir), { recursive: true })) {
        if (/\.(ya?ml|md|sh|json)$|Dockerfile$/.test(file)) {
          const text = await readFile(join(REPO_ROOT, dir, file), 'utf8');
          for (const match of text.matchAll(/\bnode:\d+[\w.-]*/g)) {
            seen.set(`${dir}/${file}: ${match[0]}`, match[0]);
          }
        }
      }
    }
    for (const match of (await readFile(join(REPO_ROOT, 'README.md'), 'utf8')).matchAll(
      /\bnode:\d+[\w.-]*/g,
    )) {
      seen.set(`README.md: ${match[0]}`, match[0]);
    }
    assert.ok(seen.size >= 3, [...seen.keys()].join(', '));
    assert.deepEqual(
      [...seen].filter(([, image]) => image !== base).map(([where]) => where),
      [],
      `another Node base than ${base}`,
    );
  });

  it('ships every script the manifests, the compose file and the docs run', async () => {
    const dockerfile = await readFile(DOCKERFILE, 'utf8');
    const shipped = new Set(argList(dockerfile, 'WORKSPACES'));
    const texts: string[] = [];
    for (const dir of ['deploy', 'docs']) {
      for (const file of await readdir(join(REPO_ROOT, dir), { recursive: true })) {
        if (/\.(ya?ml|md|json|conf)$|Dockerfile$/.test(file)) {
          texts.push(await readFile(join(REPO_ROOT, dir, file), 'utf8'));
        }
      }
    }
    texts.push(await readFile(join(REPO_ROOT, 'README.md'), 'utf8'));
    const scripts = new Set(
      texts.flatMap((t) =>
        [...t.matchAll(/\bservices\/[a-z]+\/dist\/src\/[\w./-]+\.js\b/g)].map((m) => m[0]),
      ),
    );
    assert.ok(scripts.size >= 4, `found only ${[...scripts].join(', ')}`);
    for (const script of scripts) {
      const workspace = script.split('/').slice(0, 2).join('/');
      assert.ok(shipped.has(workspace), `${script}: ${workspace} is not in the image`);
      assert.ok(existsSync(join(REPO_ROOT, script)), `${script} is not in the build output`);
    }
  });

  it('ships every library the services import, and no development dependency is imported', async () => {
    const dockerfile = await readFile(DOCKERFILE, 'utf8');
    const workspaces = argList(dockerfile, 'WORKSPACES');
    const libraries = argList(dockerfile, 'LIBRARIES');
    const byName = new Map<string, string>();
    for (const workspace of [...workspaces, ...libraries]) {
      byName.set((await manifest(workspace)).name, workspace);
    }
    const builtins = new Set(builtinModules);
    let checked = 0;
    for (const workspace of [...workspaces, ...libraries]) {
      const pkg = await manifest(workspace);
      const dependencies = new Set(Object.keys(pkg.dependencies ?? {}));
      // The image copies dist/src and the manifests, nothing else of a workspace.
      for (const target of [
        ...Object.values(pkg.exports ?? {}).map((e) => e.default ?? ''),
        ...Object.values(pkg.bin ?? {}),
      ]) {
        assert.match(target, /^\.\/dist\/src\//, `${workspace}: ${target} is not shipped`);
      }
      for (const [specifier, file] of await bareImports(
        join(REPO_ROOT, workspace, 'dist', 'src'),
      )) {
        const name = packageOf(specifier);
        if (specifier.startsWith('node:') || builtins.has(name)) {
          continue;
        }
        assert.ok(
          dependencies.has(name),
          `${file} imports ${specifier}, not a production dependency of ${workspace}` +
            (pkg.devDependencies?.[name] === undefined ? '' : ' (a development one)'),
        );
        if (name.startsWith('@shoal/')) {
          assert.ok(byName.has(name), `${workspace} needs ${name}, which the image does not ship`);
        }
        checked += 1;
      }
    }
    assert.ok(checked > 20, `only ${String(checked)} imports found`);
  });

  it('as process 1, as the image runs it, the agent stops on SIGTERM and removes its hosts files', async () => {
    const unshare = requireBinary('unshare');
    const dir = await makeTempDir('pid1');
    const hostsDir = join(dir.path, 'hosts');
    const proc = startProcess(
      unshare,
      // A PID namespace of its own (and a user namespace, so that no privilege is needed),
      // with node forked into it as process 1.
      [
        '--user',
        '--map-root-user',
        '--pid',
        '--fork',
        '--kill-child',
        process.execPath,
        ...(await serviceNodeFlags('agent')),
        AGENT_MAIN,
      ],
      {
        logPath: join(dir.path, 'log'),
        env: {
          PATH: process.env.PATH ?? '',
          SHOAL_AGENT_REGISTRIES: 'registry.example.com',
          SHOAL_AGENT_LISTEN: '127.0.0.1:0',
          SHOAL_AGENT_CACHE_DIR: join(dir.path, 'cache'),
          SHOAL_AGENT_HOSTS_DIR: hostsDir,
        },
      },
    );
    try {
      const hostsFile = join(hostsDir, 'registry.example.com', 'hosts.toml');
      await waitFor(
        'the agent writes its hosts file',
        () => Promise.resolve(existsSync(hostsFile)),
        {
          process: proc,
          timeoutMs: 30_000,
        },
      );
      const unsharePid = proc.child.pid;
      assert.ok(unsharePid !== undefined);
      const children = await readFile(
        `/proc/${String(unsharePid)}/task/${String(unsharePid)}/children`,
        'utf8',
      );
      const node = Number(children.trim());
      const status = await readFile(`/proc/${String(node)}/status`, 'utf8');
      assert.match(status, /^NSpid:\s+\d+\s+1$/m, 'node is process 1 of its namespace');

      const exited = once(proc.child, 'exit') as Promise<[number | null, string | null]>;
      process.kill(node, 'SIGTERM');
      const [code, signal] = await exited;
      assert.deepEqual([code, signal], [0, null], 'exited 0');
      assert.equal(existsSync(hostsFile), false, 'its hosts file is gone');
      assert.match(await readFile(proc.logPath, 'utf8'), /"msg":"stopped"/);
    } catch (error) {
      const log = await readFile(proc.logPath, 'utf8').catch(() => '');
      throw new Error(`${(error as Error).message}\n${log.slice(-3000)}`);
    } finally {
      await proc.stop();
      await dir.remove();
    }
  });
});
