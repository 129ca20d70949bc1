/**
 * containerd hosts.toml files pointing each mirrored registry at the agent: written once the
 * mirror listens, removed when the agent stops, so containerd goes straight to the registry
 * whenever no agent is there to answer.
 *
 * The directory is shared with whoever else configures containerd on the node. A file the
 * agent did not write is never changed or removed: ours carry a marker on their first line,
 * and only a file with the marker is replaced. On removal a file is deleted only if it is
 * still exactly what this process wrote, so an agent that stops never deletes the files of
 * the agent that replaced it (a DaemonSet update that starts the new pod first).
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

import type { UpstreamRegistry } from '@shoal/registry';
import type { Logger } from '@shoal/runtime';

import type { AgentMetrics } from '../metrics.js';
import type { HostsConfig } from './config.js';

/** The first line of every file the agent writes starts with this. */
export const HOSTS_MARKER = '# Written by the Shoal agent';

/** The file containerd reads in each registry's directory. */
export const HOSTS_FILE = 'hosts.toml';

/** Whether `text` is a hosts.toml written by a Shoal agent (this one or an earlier one). */
export function isAgentHostsFile(text: string): boolean {
  return text.startsWith(`${HOSTS_MARKER} `);
}

/**
 * The URL containerd falls back to when the mirror fails: scheme, host and any base path,
 * never user info or a query, which have no place in a file other tools read.
 */
function serverUrl(registry: UpstreamRegistry): string {
  return registry.url.origin + registry.url.pathname.replace(/\/+$/, '');
}

/**
 * A TOML basic string. JSON's string escapes are a subset of TOML's, so JSON's quoting is
 * valid TOML; the values are validated URLs, but quoting keeps any character harmless.
 */
function tomlString(text: string): string {
  return JSON.stringify(text);
}

/**
 * The hosts.toml for `registry`: the mirror first, for pulls and tag resolution only, and the
 * registry itself as `server`, which containerd falls back to when the mirror fails.
 */
export function renderHostsToml(
  registry: UpstreamRegistry,
  mirrorUrl: string,
  marker: string,
): string {
  return [
    marker,
    `server = ${tomlString(serverUrl(registry))}`,
    '',
    `[host.${tomlString(mirrorUrl)}]`,
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n');
}

export interface HostsFilesOptions {
  /** containerd's `config_path`; created when missing. */
  readonly dir: string;
  /** One file per registry, in a directory named by its host (`docker.io`, `host:port`). */
  readonly registries: readonly UpstreamRegistry[];
  /** Who wrote the files, named in the marker: the agent's peer id (the node name). */
  readonly owner: string;
  readonly metrics: Pick<AgentMetrics, 'hostsFiles' | 'hostsFilesSkipped' | 'hostsFileErrors'>;
  readonly logger: Logger;
  /** The clock the marker's time is read from; tests pin it. */
  readonly now?: () => Date;
}

interface WrittenFile {
  readonly path: string;
  readonly content: string;
}

function errorCode(error: unknown): string | undefined {
  return error instanceof Error && 'code' in error && typeof error.code === 'string'
    ? error.code
    : undefined;
}

/** Reads `path`, or undefined when there is no such file. */
async function readIfPresent(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if (errorCode(error) === 'ENOENT') {
      return undefined;
    }
    throw error;
  }
}

/** The hosts.toml files of one agent process. Problems are logged and counted, never thrown. */
export class HostsFiles {
  readonly #options: HostsFilesOptions;
  readonly #written: WrittenFile[] = [];
  /** Directories this process created, to remove again if they are empty at the end. */
  readonly #createdDirs = new Set<string>();

  constructor(options: HostsFilesOptions) {
    // Absolute, so the directories mkdir reports as created compare with ours.
    this.#options = { ...options, dir: resolve(options.dir) };
  }

  /** Paths of the files written and not yet removed. */
  get paths(): readonly string[] {
    return this.#written.map((file) => file.path);
  }

  /** Writes a file for every registry that has none or has one of ours, pointing at `mirrorUrl`. */
  async write(mirrorUrl: string): Promise<void> {
    const { owner, registries, logger } = this.#options;
    const stamp = (this.#options.now ?? (() => new Date()))().toISOString();
    const marker = `${HOSTS_MARKER} ${owner} at ${stamp}; removed when it stops.`;
    for (const registry of registries) {
      const path = join(this.#options.dir, registry.host, HOSTS_FILE);
      const content = renderHostsToml(registry, mirrorUrl, marker);
      try {
        if (await this.#writeOne(path, content)) {
          this.#written.push({ path, content });
          logger.info({ path, registry: registry.host, mirror: mirrorUrl }, 'hosts.toml written');
        } else {
          this.#options.metrics.hostsFilesSkipped.inc();
          logger.warn(
            { path, registry: registry.host },
            'hosts.toml exists and was not written by a Shoal agent; left as it is',
          );
        }
      } catch (error) {
        this.#options.metrics.hostsFileErrors.inc({ operation: 'write' });
        logger.error(
          { err: error, path, registry: registry.host },
          'could not write hosts.toml; containerd will not use the mirror for this registry',
        );
      }
    }
    this.#options.metrics.hostsFiles.set(this.#written.length);
  }

  /**
   * Removes the files written by `write` that are still as written, then the directories
   * created for them if they are empty.
   */
  async remove(): Promise<void> {
    const { logger } = this.#options;
    for (let file = this.#written.pop(); file !== undefined; file = this.#written.pop()) {
      try {
        const text = await readIfPresent(file.path);
        if (text === file.content) {
          await rm(file.path, { force: true });
          logger.info({ path: file.path }, 'hosts.toml removed');
        } else if (text !== undefined) {
          logger.info(
            { path: file.path, byAgent: isAgentHostsFile(text) },
            'hosts.toml was replaced since this agent wrote it; left as it is',
          );
        }
      } catch (error) {
        this.#options.metrics.hostsFileErrors.inc({ operation: 'remove' });
        logger.error({ err: error, path: file.path }, 'could not remove hosts.toml');
      }
    }
    this.#options.metrics.hostsFiles.set(0);
    // Deepest first, so a parent is tried after its children.
    const dirs = [...this.#createdDirs].sort((a, b) => b.length - a.length);
    this.#createdDirs.clear();
    for (const dir of dirs) {
      await rmdir(dir).catch((error: unknown) => {
        // Not empty: someone else keeps files there. Gone: nothing to do.
        if (errorCode(error) !== 'ENOTEMPTY' && errorCode(error) !== 'ENOENT') {
          logger.warn({ err: error, dir }, 'could not remove a hosts directory the agent created');
        }
      });
    }
  }

  /** Writes `content` to `path` atomically unless a foreign file is there; false if one is. */
  async #writeOne(path: string, content: string): Promise<boolean> {
    const dir = dirname(path);
    const created = await mkdir(dir, { recursive: true });
    if (created !== undefined) {
      // `created` is the topmost directory made; the ones below it down to `dir` are new too.
      for (let d = dir; d.startsWith(created) && d !== dirname(d); d = dirname(d)) {
        this.#createdDirs.add(d);
      }
    }
    const existing = await readIfPresent(path);
    if (existing !== undefined && !isAgentHostsFile(existing)) {
      return false;
    }
    // containerd reads the file on every pull: it must never see a partial one.
    const temp = join(dir, `.${HOSTS_FILE}.shoal-${randomBytes(6).toString('hex')}`);
    await writeFile(temp, content, { flag: 'wx', mode: 0o644 });
    try {
      if (existing === undefined) {
        return await this.#placeNew(temp, path);
      }
      await rename(temp, path);
      return true;
    } finally {
      await rm(temp, { force: true });
    }
  }

  /**
   * Puts `temp` at `path` only if nothing is there yet: a hard link fails when the name is
   * taken, where a rename would overwrite a file written since it was checked.
   */
  async #placeNew(temp: string, path: string): Promise<boolean> {
    try {
      await link(temp, path);
      return true;
    } catch {
      // Taken since it was checked (EEXIST), or a filesystem without hard links: look again.
    }
    const existing = await readIfPresent(path);
    if (existing !== undefined && !isAgentHostsFile(existing)) {
      return false;
    }
    await rename(temp, path);
    return true;
  }
}

/** The agent's hosts files, or undefined when `SHOAL_AGENT_HOSTS_DIR` is not set. */
export function createHostsFiles(
  config: HostsConfig & { readonly SHOAL_AGENT_PEER_ID: string },
  deps: Pick<HostsFilesOptions, 'registries' | 'metrics' | 'logger'>,
): HostsFiles | undefined {
  return config.SHOAL_AGENT_HOSTS_DIR === undefined
    ? undefined
    : new HostsFiles({
        ...deps,
        dir: config.SHOAL_AGENT_HOSTS_DIR,
        owner: config.SHOAL_AGENT_PEER_ID,
      });
}
