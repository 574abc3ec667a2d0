// Command reencrypt rotates the KMS key protecting envelope-encrypted tokens
// in Postgres: run | plan | status | verify | keys. See the README; the
// command line itself is package internal/cli.
package main

import (
	"os"

	"github.com/reencrypt/reencrypt/internal/cli"
)

func main() { os.Exit(cli.Main(cli.Options{})) }
