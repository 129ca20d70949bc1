/**
 * Credentials for containerd from a docker config JSON (`~/.docker/config.json`, or a
 * `dockerconfigjson` Secret): the seed server reads the same file itself; containerd gets them
 * as `ctr --user`, and the agents pass the registry's challenge through to it.
 */
import { loadDockerConfig } from '@shoal/registry';

/** `user:password` for `host` in the docker config at `path`; undefined when it has none. */
export async function credentialsFor(path: string, host: string): Promise<string | undefined> {
  const credentials = (await loadDockerConfig(path)).get(host);
  return credentials === undefined ? undefined : `${credentials.username}:${credentials.password}`;
}
