import { existsSync } from 'node:fs'
import { join } from 'node:path'
import fastifyStatic from '@fastify/static'
import type { FastifyPluginAsync } from 'fastify'
import { KdlError } from '../common/errors.js'

export interface UiOptions {
  /** The built dashboard (`npm run build` writes it to dist/ui). */
  dir: string
}

/**
 * The dashboard's files at `/ui/` (issue 14). The files are public; what they show comes from `/v1`, behind
 * the API token when one is set. Not built: `/ui` says how to build it instead of a bare 404.
 */
export const uiPlugin: FastifyPluginAsync<UiOptions> = async (app, opts) => {
  if (!existsSync(join(opts.dir, 'index.html'))) {
    const notBuilt = async (): Promise<never> => {
      throw new KdlError('KDL_ERR_NOT_FOUND', `the dashboard is not built (no ${join(opts.dir, 'index.html')}): run \`npm run build\``)
    }
    app.get('/ui', notBuilt)
    app.get('/ui/*', notBuilt)
    return
  }
  app.get('/ui', { schema: { hide: true } }, async (_request, reply) => reply.redirect('/ui/', 301))
  await app.register(fastifyStatic, {
    root: opts.dir,
    prefix: '/ui/',
    decorateReply: false,
    dotfiles: 'ignore',
    // File names under assets/ carry their content hash; index.html names them, so it is asked for each time.
    cacheControl: false,
    setHeaders: (reply, path) => {
      void reply.header('cache-control', path.endsWith('.html') ? 'no-cache' : 'public, max-age=31536000, immutable')
    },
  })
}
