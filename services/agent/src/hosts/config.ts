/**
 * Configuration of the containerd hosts.toml files the agent writes. Off unless a directory
 * is given: on a node, whoever manages containerd's configuration may prefer to write them.
 */
import { envBool, urlHost, type ListenAddress } from '@shoal/runtime';
import { z } from 'zod';

export const hostsConfig = z.object({
  /**
   * A hosts.toml someone else wrote gets the mirror inserted as its first host, everything
   * else kept, and is put back as it was when the agent stops (default false: left alone).
   */
  SHOAL_AGENT_HOSTS_MERGE: envBool(false),
  /**
   * containerd's `config_path`, e.g. `/etc/containerd/certs.d`. When set, the agent writes
   * `<dir>/<registry>/hosts.toml` for every mirrored registry once it listens, and removes
   * them when it stops. Unset (the default): no files are written.
   */
  SHOAL_AGENT_HOSTS_DIR: z.string().min(1).optional(),
  /**
   * The mirror URL written into the files, `http(s)://host:port` without a path (default:
   * `http://` and `SHOAL_AGENT_LISTEN`, with `0.0.0.0` and `::` as `127.0.0.1`).
   */
  SHOAL_AGENT_HOSTS_MIRROR_URL: z
    .url({ protocol: /^https?$/, error: 'must be an http or https URL' })
    .refine((text) => {
      // zod runs this even after the URL check failed; that failure is reported already.
      if (!URL.canParse(text)) {
        return true;
      }
      const url = new URL(text);
      return url.pathname === '/' && url.search === '' && url.hash === '';
    }, 'must be scheme://host:port, without a path, query or fragment')
    .optional(),
});

export type HostsConfig = z.infer<typeof hostsConfig>;

/** Addresses that mean "every interface" when listening; clients reach them on loopback. */
const ANY_ADDRESS = new Set(['0.0.0.0', '::']);

/**
 * The mirror URL containerd is pointed at: the configured one, or the listen address with
 * the port actually bound (`SHOAL_AGENT_LISTEN` may ask for port 0).
 */
export function hostsMirrorUrl(
  configured: string | undefined,
  listen: ListenAddress,
  boundPort: number,
): string {
  if (configured !== undefined) {
    return new URL(configured).origin;
  }
  const host = ANY_ADDRESS.has(listen.host) ? '127.0.0.1' : listen.host;
  return `http://${urlHost(host)}:${boundPort}`;
}
