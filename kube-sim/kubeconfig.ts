import YAML from 'yaml'

/** A kubeconfig (YAML) for the stand-in's API server (issue 10): one cluster, one user (a bearer token), one context. */
export interface KubeconfigOptions {
  server: string
  token?: string | undefined
  /** PEM of the server's certificate (its own CA), for an https server. */
  ca?: string | undefined
  /** @default 'default' */
  namespace?: string
  /** Cluster, user and context name. @default 'kindling-kube-sim' */
  name?: string
}

export function kubeconfigYaml(o: KubeconfigOptions): string {
  const name = o.name ?? 'kindling-kube-sim'
  return YAML.stringify({
    apiVersion: 'v1', kind: 'Config', preferences: {},
    clusters: [{ name, cluster: { server: o.server, ...(o.ca === undefined ? {} : { 'certificate-authority-data': Buffer.from(o.ca).toString('base64') }) } }],
    users: [{ name, user: o.token === undefined ? {} : { token: o.token } }],
    contexts: [{ name, context: { cluster: name, user: name, namespace: o.namespace ?? 'default' } }],
    'current-context': name,
  })
}
