package cli

import (
	"context"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/reencrypt/reencrypt/pkg/rdsauth"
)

// iamAuth makes pc sign in with a fresh RDS IAM token per connection when
// DATABASE_IAM_AUTH is set. The credentials are the AWS SDK's default
// chain, as the KMS client's (IRSA in the Job); AWS_REGION is the
// database's region. A connection string that could send the token in
// plaintext is refused as configuration (exit 78) before any connection.
func (a *app) iamAuth(ctx context.Context, pc *pgxpool.Config, variable string) error {
	if !a.cfg.DatabaseIAMAuth {
		return nil
	}
	if a.awsCfg == nil {
		cfg, err := awsconfig.LoadDefaultConfig(ctx)
		if err != nil {
			return configError("DATABASE_IAM_AUTH: load AWS configuration: %v", err)
		}
		a.awsCfg = &cfg
	}
	if err := rdsauth.Configure(pc, rdsauth.Options{Region: a.awsCfg.Region, Credentials: a.awsCfg.Credentials}); err != nil {
		return configError("%s with DATABASE_IAM_AUTH=true: %v", variable, err)
	}
	return nil
}
