package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"

	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// IsKeyARN reports whether ref is a key ARN (not an alias ARN, id or name):
// such a reference names one key forever and needs no KMS call.
func IsKeyARN(ref string) bool {
	return strings.HasPrefix(ref, "arn:") && strings.Contains(ref, ":key/")
}

// resolver turns a key reference (a kid, or a registry key_id) into the key
// ARN it names today, asking KMS (DescribeKey) once per reference.
type resolver struct {
	api   kmsclient.KMS
	cache map[string]resolved
}

type resolved struct {
	arn   string
	found bool
}

func newResolver(api kmsclient.KMS) *resolver {
	return &resolver{api: api, cache: map[string]resolved{}}
}

// ARN returns the key ARN ref names. found is false when KMS answers
// NotFound (an alias deleted, a key id of another account); any other
// failure is an error, and the caller's check fails.
func (r *resolver) ARN(ctx context.Context, ref string) (arn string, found bool, err error) {
	if IsKeyARN(ref) {
		return ref, true, nil
	}
	if c, ok := r.cache[ref]; ok {
		return c.arn, c.found, nil
	}
	if r.api == nil {
		return "", false, fmt.Errorf("cannot resolve key reference %q without KMS", ref)
	}
	out, err := r.api.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(ref)})
	var ae smithy.APIError
	switch {
	case errors.As(err, &ae) && ae.ErrorCode() == "NotFoundException":
		r.cache[ref] = resolved{}
		return "", false, nil
	case err != nil:
		return "", false, kmsError("DescribeKey", ref, err)
	case out.KeyMetadata == nil || aws.ToString(out.KeyMetadata.Arn) == "":
		return "", false, fmt.Errorf("kms DescribeKey %s: answer has no key ARN", ref)
	}
	c := resolved{arn: aws.ToString(out.KeyMetadata.Arn), found: true}
	r.cache[ref] = c
	return c.arn, true, nil
}
