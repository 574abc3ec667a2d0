// Package rdsauth signs in to Amazon RDS and Aurora PostgreSQL with IAM
// database authentication (DATABASE_IAM_AUTH=true), so that the Job's IRSA
// role needs no database password.
//
// Invariants:
//
//   - Every new connection gets its own token, built in the pool's
//     BeforeConnect from the credentials at that moment. A token is valid
//     for 15 minutes, only to open a connection; an open connection outlives
//     it. Credentials come from the provider given (the AWS SDK's default
//     chain in production: IRSA web identity, cached and refreshed by the
//     SDK), so building a token is a local signature, not a network call.
//   - A token is a bearer credential for 15 minutes. It is only ever sent
//     over TLS: Configure refuses a configuration in which any connection
//     attempt (sslmode disable, allow or prefer, pgx's default) could go in
//     plaintext, and a Unix socket.
//   - A token is signed for one host:port. Configure refuses a multi-host
//     connection string instead of sending a token to a host it was not
//     signed for.
//   - The token never appears in an error or a log line: it lives only in the
//     copy of the connection configuration pgx is about to use.
package rdsauth
