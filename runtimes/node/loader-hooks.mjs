// Module loader hooks of the Kindling Node runtime, registered by server.mjs (module.register) only when an
// instance loads function code a second time (recycle mode). They give every module of a new load a new
// URL, `file:///…/x.mjs?kdl=<generation>`, so the ESM loader, which never forgets a URL, evaluates it afresh.
// See ../PROTOCOL.md, "Unload and fresh loads".

/** @type {Int32Array} generation of the load in progress, shared with the server thread */
let current
/** @type {string} URL prefix of the runtime's own files, which stay as they are */
let self = ''

const GEN = /[?&]kdl=(\d+)/

export function initialize(data) {
  current = data.gen
  self = data.self
}

export async function resolve(specifier, context, nextResolve) {
  const result = await nextResolve(specifier, context)
  const url = result.url
  if (!url.startsWith('file:') || url.startsWith(self) || GEN.test(url)) return result
  // A module inherits its importer's generation, so code still running from an older load keeps seeing its
  // own modules; importers without one (CommonJS files, which the server reloads by clearing require.cache)
  // get the generation of the current load.
  const parent = context.parentURL === undefined ? null : GEN.exec(context.parentURL)
  const gen = parent === null ? Atomics.load(current, 0) : Number(parent[1])
  if (gen === 0) return result
  const hash = url.indexOf('#')
  const base = hash === -1 ? url : url.slice(0, hash)
  const tail = `${base.includes('?') ? '&' : '?'}kdl=${gen}${hash === -1 ? '' : url.slice(hash)}`
  return { ...result, url: base + tail }
}
