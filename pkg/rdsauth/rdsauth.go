package rdsauth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrNeedsTLS: a connection could be attempted without TLS, and the token,
// a password for 15 minutes, would cross the network in clear text.
var ErrNeedsTLS = errors.New("IAM database authentication needs TLS on every connection attempt: " +
	"set sslmode=verify-full (with sslrootcert set to the RDS CA bundle) or sslmode=require in the connection string; " +
	"disable, allow and prefer (pgx's default when sslmode is not set) may connect in plaintext")

// TokenFunc builds the password of one connection. auth.BuildAuthToken is
// the production one; tests may count or fail calls.
type TokenFunc func(ctx context.Context, endpoint, region, dbUser string, creds aws.CredentialsProvider) (string, error)

// buildAuthToken adapts auth.BuildAuthToken (variadic options) to TokenFunc.
func buildAuthToken(ctx context.Context, endpoint, region, dbUser string, creds aws.CredentialsProvider) (string, error) {
	return auth.BuildAuthToken(ctx, endpoint, region, dbUser, creds)
}

// Options say where tokens come from.
type Options struct {
	// Region of the database: the token is signed for it.
	Region string
	// Credentials sign the tokens; in production the aws.Config's
	// (an aws.CredentialsCache over the default chain).
	Credentials aws.CredentialsProvider
	// Token builds a token; nil means auth.BuildAuthToken.
	Token TokenFunc
}

// Configure makes every new connection of pc authenticate with a fresh IAM
// token, after refusing what would send a token where it must not go (see
// the package doc). It keeps a BeforeConnect pc already has, run first.
func Configure(pc *pgxpool.Config, o Options) error {
	if err := check(pc.ConnConfig); err != nil {
		return err
	}
	if o.Region == "" {
		return errors.New("IAM database authentication: no AWS region (set AWS_REGION to the database's region)")
	}
	if o.Credentials == nil {
		return errors.New("IAM database authentication: no AWS credentials provider")
	}
	token := o.Token
	if token == nil {
		token = buildAuthToken
	}
	prev := pc.BeforeConnect
	pc.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		if prev != nil {
			if err := prev(ctx, cc); err != nil {
				return err
			}
		}
		// Checked again: a BeforeConnect before this one could have
		// changed the host or TLS.
		if err := check(cc); err != nil {
			return err
		}
		endpoint := net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port)))
		t, err := token(ctx, endpoint, o.Region, cc.User, o.Credentials)
		if err != nil {
			// The error of the SDK names no secret; the token was not made.
			return fmt.Errorf("IAM database authentication: token for user %q at %s: %w", cc.User, endpoint, err)
		}
		cc.Password = t
		return nil
	}
	return nil
}

// check refuses a connection configuration that could send a token in
// plaintext or to a host it was not signed for.
func check(cc *pgx.ConnConfig) error {
	if strings.HasPrefix(cc.Host, "/") {
		return fmt.Errorf("%w (the connection string names a Unix socket, %s)", ErrNeedsTLS, cc.Host)
	}
	if cc.TLSConfig == nil {
		return ErrNeedsTLS
	}
	for _, fb := range cc.Fallbacks {
		if fb.TLSConfig == nil {
			return ErrNeedsTLS
		}
		if fb.Host != cc.Host || fb.Port != cc.Port {
			return fmt.Errorf("IAM database authentication: a token is signed for one host, and the connection string names several (%s:%d, %s:%d)",
				cc.Host, cc.Port, fb.Host, fb.Port)
		}
	}
	return nil
}
