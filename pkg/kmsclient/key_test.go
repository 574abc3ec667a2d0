package kmsclient_test

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/reencrypt/reencrypt/pkg/kmsclient"
)

// describeOnly answers DescribeKey with out or err; the other calls are not
// made (the nil embedded interface would panic).
type describeOnly struct {
	kmsclient.KMS
	out *kms.DescribeKeyOutput
	err error
}

func (d describeOnly) DescribeKey(context.Context, *kms.DescribeKeyInput, ...func(*kms.Options)) (*kms.DescribeKeyOutput, error) {
	return d.out, d.err
}

// TestResolveKeyClasses: the one resolver says key (exit 77) or transient
// (exit 75) for every failure, never neither.
func TestResolveKeyClasses(t *testing.T) {
	t.Parallel()
	const arn = "arn:aws:kms:eu-west-1:111122223333:key/k"
	api := func(code string) describeOnly {
		return describeOnly{err: &smithy.GenericAPIError{Code: code, Message: "synthetic"}}
	}
	for _, tc := range []struct {
		name             string
		api              describeOnly
		key, unavailable bool
	}{
		{"NotFoundException", api("NotFoundException"), true, false},
		{"AccessDeniedException", api("AccessDeniedException"), true, false},
		{"ThrottlingException", api("ThrottlingException"), false, true},
		{"ValidationException", api("ValidationException"), false, true},
		{"transport error", describeOnly{err: errors.New("dial tcp: connection refused")}, false, true},
		{"answer without an ARN", describeOnly{out: &kms.DescribeKeyOutput{KeyMetadata: &types.KeyMetadata{}}}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := kmsclient.ResolveKey(context.Background(), tc.api, "alias/x")
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, kmsclient.ErrKeyUnusable) != tc.key || errors.Is(err, kmsclient.ErrUnavailable) != tc.unavailable {
				t.Errorf("ResolveKey: %v: key %v unavailable %v, want %v %v", err,
					errors.Is(err, kmsclient.ErrKeyUnusable), errors.Is(err, kmsclient.ErrUnavailable), tc.key, tc.unavailable)
			}
		})
	}
	ok := describeOnly{out: &kms.DescribeKeyOutput{KeyMetadata: &types.KeyMetadata{Arn: aws.String(arn), KeyState: types.KeyStateDisabled}}}
	k, err := kmsclient.ResolveKey(context.Background(), ok, "alias/x")
	if err != nil || k.ARN != arn || k.State != types.KeyStateDisabled {
		t.Errorf("ResolveKey of a disabled key: %+v, %v; want it resolved whatever its state", k, err)
	}
}
