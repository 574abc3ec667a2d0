package kmsclient

import (
	"context"
	"errors"
	"strings"
	"sync"
)

// KidResolver says which key an envelope's kid names when the kid is not a
// key ARN: a writer other than reencrypt may have recorded a key id, an
// alias name or an alias ARN. Such a token under OLD is still under OLD: if
// it were left alone as "another key", a run could exit 0 with it there and
// the key guard would (rightly) refuse to retire OLD forever.
//
// It asks KMS once per distinct kid (DescribeKey), is safe for concurrent
// use, and keeps at most maxKids answers (a table can hold any number of
// junk kids; past that each lookup asks again).
type KidResolver struct {
	api   KMS
	mu    sync.Mutex
	cache map[string]string
}

const maxKids = 1024

// NewKidResolver returns a resolver asking api.
func NewKidResolver(api KMS) *KidResolver {
	return &KidResolver{api: api, cache: map[string]string{}}
}

// IsKeyARN reports whether kid is a key ARN, which names one key forever.
func IsKeyARN(kid string) bool {
	return strings.HasPrefix(kid, "arn:") && strings.Contains(kid, ":key/")
}

// ARN returns the ARN of the key kid names, "" when it names no key this
// identity can see. NotFound and AccessDenied both give "": the Job's
// identity may describe OLD and NEW, so a kid it may not describe is
// neither. Any other failure (throttling, the network) is an error.
func (r *KidResolver) ARN(ctx context.Context, kid string) (string, error) {
	if IsKeyARN(kid) {
		return kid, nil
	}
	r.mu.Lock()
	arn, ok := r.cache[kid]
	r.mu.Unlock()
	if ok {
		return arn, nil
	}
	k, err := Resolve(ctx, r.api, kid)
	var ke *Error
	switch {
	case errors.As(err, &ke) && (ke.Code == "NotFoundException" || ke.Code == "AccessDeniedException" || ke.Code == "InvalidArnException"):
		arn = ""
	case err != nil:
		return "", err
	default:
		arn = k.ARN
	}
	r.mu.Lock()
	if len(r.cache) < maxKids {
		r.cache[kid] = arn
	}
	r.mu.Unlock()
	return arn, nil
}
