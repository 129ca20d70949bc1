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

/** Beside a file merged into (`merge` mode): the file as it was, put back when the agent stops. */
export const ORIGINAL_SUFFIX = '.shoal-original';

/** The end of a merged file's marker line. */
const MERGED = `merged into the file below, which comes back (from ${HOSTS_FILE}${ORIGINAL_SUFFIX}) when it stops.`;

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

/**
 * `original` (a hosts.toml someone else wrote) with the mirror inserted as its first host,
 * everything else kept byte for byte: the mirror's table goes before the first table of the
 * file (TOML keeps top-level keys such as `server` ahead of every table), or at the end when
 * it has none. Undefined when the file names the mirror already.
 */
export function mergeHostsToml(
  original: string,
  mirrorUrl: string,
  marker: string,
): string | undefined {
  const table = `[host.${tomlString(mirrorUrl)}]`;
  if (original.includes(table)) {
    return undefined;
  }
  const block = `${table}\n  capabilities = ["pull", "resolve"]\n\n`;
  const firstTable = /^[ \t]*\[/m.exec(original);
  const body =
    firstTable === null
      ? `${original}${original === '' || original.endsWith('\n') ? '' : '\n'}\n${block}`
      : `${original.slice(0, firstTable.index)}${block}${original.slice(firstTable.index)}`;
  return `${marker}\n${body}`;
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
  /**
   * A file someone else wrote gets the mirror inserted first (its original kept beside it and
   * put back on removal) instead of being left alone. Default false.
   */
  readonly merge?: boolean;
}

interface WrittenFile {
  readonly path: string;
  readonly content: string;
  /** For a merged file: where the original is kept, to put back on removal. */
  readonly original?: string;
}

function errorCode(error: unknown): string | undefined {
  return error instanceof Error && 'code' in error && typeof error.code === 'string'
    ? error.code
    : undefined;
}

/**
 * Reads `path`, or undefined when there is no such file. `latin1` maps every byte to one
 * character and back, for files that must be kept byte for byte whatever they hold.
 */
async function readIfPresent(
  path: string,
  encoding: 'utf8' | 'latin1' = 'utf8',
): Promise<string | undefined> {
  try {
    return await readFile(path, encoding);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') {
      return undefined;
    }
    throw error;
  }
}

/**
 * Puts `content` (one character per byte) at `path` through a temporary file and a rename:
 * never seen half written.
 */
async function replaceAtomically(path: string, content: string): Promise<void> {
  const temp = join(dirname(path), `.${HOSTS_FILE}.shoal-${randomBytes(6).toString('hex')}`);
  await writeFile(temp, Buffer.from(content, 'latin1'), { flag: 'wx', mode: 0o644 });
  try {
    await rename(temp, path);
  } finally {
    await rm(temp, { force: true });
  }
}

/** The hosts.toml files of one agent process. Problems are logged and counted, never thrown. */
export class HostsFiles {
  readonly #options: HostsFilesOptions;
  readonly #written: WrittenFile[] = [];
  /** Files someone else wrote that the last `write` left alone. */
  #skipped = 0;
  /** Directories this process created, to remove again if they are empty at the end. */
  readonly #createdDirs = new Set<string>();

  constructor(options: HostsFilesOptions) {
    // Absolute, so the directories mkdir reports as created compare with ours.
    this.#options = { ...options, dir: resolve(options.dir) };
  }

  /** What the last `write` did, for the agent's readiness: `2 written, 1 left alone`. */
  get summary(): string {
    return `${String(this.#written.length)} written, ${String(this.#skipped)} left alone`;
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
        const merged =
          this.#options.merge === true
            ? await this.#merge(path, mirrorUrl, `${HOSTS_MARKER} ${owner} at ${stamp}; ${MERGED}`)
            : undefined;
        if (merged !== undefined) {
          this.#written.push(merged);
          logger.info(
            { path, registry: registry.host, mirror: mirrorUrl, original: merged.original },
            'hosts.toml merged: the mirror first, the rest as it was',
          );
        } else if (await this.#writeOne(path, content)) {
          this.#written.push({ path, content });
          logger.info({ path, registry: registry.host, mirror: mirrorUrl }, 'hosts.toml written');
        } else {
          this.#options.metrics.hostsFilesSkipped.inc();
          this.#skipped += 1;
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
        const text = await readIfPresent(
          file.path,
          file.original === undefined ? 'utf8' : 'latin1',
        );
        if (text === file.content && file.original !== undefined) {
          // The original back in place, byte for byte, in one step.
          await rename(file.original, file.path);
          logger.info({ path: file.path }, 'hosts.toml restored to what it was before the merge');
        } else if (text === file.content) {
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

  /**
   * In merge mode: the mirror inserted into a file someone else wrote (or into the original
   * an earlier agent kept, when it crashed before putting it back), the original kept beside
   * it first. Undefined when there is nothing to merge into: no file, one the agent wrote
   * itself, or one that names the mirror already.
   */
  async #merge(path: string, mirrorUrl: string, marker: string): Promise<WrittenFile | undefined> {
    const originalPath = `${path}${ORIGINAL_SUFFIX}`;
    // Byte for byte: another tool's file may hold anything.
    const kept = await readIfPresent(originalPath, 'latin1');
    const existing = await readIfPresent(path, 'latin1');
    if (existing === undefined) {
      return undefined;
    }
    // Ours: merged by an agent that did not get to put the original back (or a plain file of
    // ours, with nothing kept). Someone else's: the file as it is now, even if an older copy
    // was kept, since whoever wrote it since knows best.
    const original = isAgentHostsFile(existing) ? kept : existing;
    if (original === undefined) {
      return undefined;
    }
    const content = mergeHostsToml(original, mirrorUrl, marker);
    if (content === undefined) {
      return undefined;
    }
    if (original !== kept) {
      // Kept before anything changes, so a crash at any point can be undone.
      await replaceAtomically(originalPath, original);
    }
    await replaceAtomically(path, content);
    return { path, content, original: originalPath };
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
        merge: config.SHOAL_AGENT_HOSTS_MERGE,
      });
}
