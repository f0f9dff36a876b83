package bucket

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/pier-dev/pier/internal/resources"
)

// policyVersion is the IAM policy language version of the statements we
// write.
const policyVersion = "2012-10-17"

// Actions granted per access level. HeadObject is authorised as
// s3:GetObject and HeadBucket as s3:ListBucket.
var (
	readActions = []string{
		"s3:GetObject",
		"s3:GetObjectVersion",
		"s3:GetObjectAttributes",
		"s3:GetObjectTagging",
		"s3:ListBucket",
		"s3:ListBucketVersions",
		"s3:GetBucketLocation",
	}
	writeActions = []string{
		"s3:PutObject",
		"s3:DeleteObject",
		"s3:DeleteObjectVersion",
		"s3:PutObjectTagging",
		"s3:DeleteObjectTagging",
		"s3:AbortMultipartUpload",
		"s3:ListMultipartUploadParts",
		"s3:ListBucketMultipartUploads",
	}
)

// policy is a bucket policy document. Statements are kept raw so that ones
// pier did not write survive a rewrite unchanged.
type policy struct {
	Version   string            `json:"Version"`
	Statement []json.RawMessage `json:"Statement"`
}

// statement is an Allow statement for one grant.
type statement struct {
	Sid       string    `json:"Sid"`
	Effect    string    `json:"Effect"`
	Principal principal `json:"Principal"`
	Action    []string  `json:"Action"`
	Resource  []string  `json:"Resource"`
}

type principal struct {
	AWS []string `json:"AWS"`
}

// statementID names the statement of app's grant.
func statementID(app string) string { return "pier-app-" + app }

// parsePolicy decodes a stored policy; an empty one has no statements.
func parsePolicy(doc string) (policy, error) {
	p := policy{Version: policyVersion}
	if doc == "" {
		return p, nil
	}
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		return policy{}, fmt.Errorf("parse bucket policy: %w", err)
	}
	return p, nil
}

// grantStatement allows the account exactly the actions of access on the
// bucket and its objects.
func grantStatement(bucket, app, accessKeyID string, access resources.Access) statement {
	actions := slices.Clone(readActions)
	if access == resources.ReadWrite {
		actions = append(actions, writeActions...)
	}
	return statement{
		Sid:       statementID(app),
		Effect:    "Allow",
		Principal: principal{AWS: []string{accessKeyID}},
		Action:    actions,
		Resource:  []string{"arn:aws:s3:::" + bucket, "arn:aws:s3:::" + bucket + "/*"},
	}
}

// without drops the statements with the given Sid or naming one of the
// access keys as principal.
func (p policy) without(sid string, accessKeyIDs ...string) policy {
	p.Statement = slices.DeleteFunc(slices.Clone(p.Statement), func(raw json.RawMessage) bool {
		var s struct {
			Sid       string
			Principal json.RawMessage
		}
		if json.Unmarshal(raw, &s) != nil {
			return false
		}
		if s.Sid == sid {
			return true
		}
		for _, k := range principalKeys(s.Principal) {
			if slices.Contains(accessKeyIDs, k) {
				return true
			}
		}
		return false
	})
	return p
}

// with appends a statement.
func (p policy) with(s statement) (policy, error) {
	raw, err := json.Marshal(s)
	if err != nil {
		return policy{}, fmt.Errorf("encode policy statement: %w", err)
	}
	p.Statement = append(slices.Clone(p.Statement), raw)
	return p, nil
}

// principalKeys lists the AWS principals of a statement, which may be
// written as "*", {"AWS": "key"} or {"AWS": ["key", ...]}.
func principalKeys(raw json.RawMessage) []string {
	var p struct{ AWS json.RawMessage }
	if json.Unmarshal(raw, &p) != nil || p.AWS == nil {
		return nil
	}
	var one string
	if json.Unmarshal(p.AWS, &one) == nil {
		return []string{one}
	}
	var many []string
	_ = json.Unmarshal(p.AWS, &many)
	return many
}
