/**
 * Transport errors that prove an instance never read a request sent to it (issue 8): no connection
 * (ECONNREFUSED, ENOENT: the instance was gone before the request was sent), a write to a closed peer
 * (EPIPE), or a reset (ECONNRESET: the kernel resets a Unix socket — and Linux a TCP one — whose owner
 * closed it with bytes still unread; with one request at a time per connection, those bytes are this
 * request's). A plain close after the request was sent ("other side closed") proves nothing: the
 * instance may have read it and started work.
 */
export function neverRead(code: string | undefined): boolean {
  return code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'ECONNRESET' || code === 'EPIPE' ||
    // The instance's dispatcher was closed (it died or is being stopped) before the request was dispatched.
    code === 'UND_ERR_CLOSED'
}
