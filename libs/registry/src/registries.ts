/** The registries a service talks to, as operators list them. */
import { parseRegistryHost } from '@shoal/proto';
import { z } from 'zod';

/** One mirrored registry: the host clients name (`ns=`), and the URL the agent fetches from. */
export interface UpstreamRegistry {
  /** Host as clients name it, e.g. `docker.io` or `127.0.0.1:5000`. */
  readonly host: string;
  /**
   * Base URL the agent sends requests to, e.g. `https://registry-1.docker.io`; a path in it is
   * a prefix the API lives under (`https://artifacts.example.com/api/docker/remote` serves
   * `/api/docker/remote/v2/...`), see `registryUrl`.
   */
  readonly url: URL;
}

/**
 * The URL of an API path (`/v2/...`, with a query or not) at a registry: below the path of its
 * base URL, not in place of it, so a registry served under a prefix keeps it.
 */
export function registryUrl(registry: UpstreamRegistry, path: string): URL {
  const asked = new URL(path, 'http://path.invalid');
  const url = new URL(registry.url);
  url.pathname = `${url.pathname.replace(/\/+$/, '')}${asked.pathname}`;
  url.search = asked.search;
  return url;
}

/** docker.io is served from a different host than its name, as every client knows. */
const WELL_KNOWN_ENDPOINTS: Record<string, string> = {
  'docker.io': 'https://registry-1.docker.io',
};

/**
 * Other names of Docker Hub. Image references, containerd's `ns=` and its hosts.toml directory
 * all say `docker.io`; an operator who lists the API host (`registry-1.docker.io`) or the old
 * index (`index.docker.io`) means the same registry. Taken as one, the agent would write
 * hosts.toml for a directory containerd never reads and every Docker Hub pull would bypass it.
 */
const REGISTRY_ALIASES: Record<string, string> = {
  'registry-1.docker.io': 'docker.io',
  'index.docker.io': 'docker.io',
};

/** The name clients use for the registry `host` (Docker Hub's other names become docker.io). */
export function canonicalRegistryHost(host: string): string {
  return REGISTRY_ALIASES[host.toLowerCase()] ?? host;
}

/**
 * Parses `SHOAL_AGENT_REGISTRIES`: a comma-separated list of `host` or `host=url`, e.g.
 * `docker.io,ghcr.io,127.0.0.1:5000=http://127.0.0.1:5000`. A bare host is fetched over
 * HTTPS from itself (docker.io from registry-1.docker.io). Docker Hub's other names
 * (`registry-1.docker.io`, `index.docker.io`) are read as `docker.io`.
 */
export const registriesList = z
  .string({ error: 'required: a comma-separated list of registries to mirror' })
  .transform((text, ctx): UpstreamRegistry[] => {
    const registries: UpstreamRegistry[] = [];
    for (const entry of text
      .split(',')
      .map((e) => e.trim())
      .filter((e) => e !== '')) {
      const eq = entry.indexOf('=');
      const host = canonicalRegistryHost(eq === -1 ? entry : entry.slice(0, eq));
      const endpoint =
        eq === -1 ? (WELL_KNOWN_ENDPOINTS[host] ?? `https://${host}`) : entry.slice(eq + 1);
      try {
        parseRegistryHost(host);
      } catch {
        ctx.addIssue({ code: 'custom', message: `"${host}" is not a registry host` });
        continue;
      }
      let url: URL;
      try {
        url = new URL(endpoint);
      } catch {
        ctx.addIssue({ code: 'custom', message: `"${endpoint}" (for ${host}) is not a URL` });
        continue;
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        ctx.addIssue({
          code: 'custom',
          message: `${host}: only http and https upstreams are supported`,
        });
        continue;
      }
      if (registries.some((r) => r.host === host)) {
        ctx.addIssue({ code: 'custom', message: `${host} is listed twice` });
        continue;
      }
      registries.push({ host, url });
    }
    if (registries.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'name at least one registry to mirror' });
    }
    return registries;
  });
