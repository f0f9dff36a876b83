package bucket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/pier-dev/pier/internal/resources"
)

// The driver administers buckets through the gateway's S3 API as root, so
// that ownership, ACLs and policy validation are versitygw's own.

// ownerTag marks a bucket with the resource it belongs to, so that two
// resources naming the same bucket_name are told apart from a retry.
const ownerTag = "pier-resource"

// isCode reports whether err is an S3 error with the given code.
func isCode(err error, code string) bool {
	var apiErr smithy.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode() == code
}

// createBucket creates the bucket, or accepts it when it already exists for
// this resource (a retried Provision). created tells which.
func (d *Driver) createBucket(ctx context.Context, bucket, resource string) (created bool, err error) {
	in := &s3.CreateBucketInput{Bucket: aws.String(bucket)}
	if d.cfg.Region != "us-east-1" {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{
			LocationConstraint: types.BucketLocationConstraint(d.cfg.Region),
		}
	}
	_, err = d.admin.CreateBucket(ctx, in)
	if err == nil {
		return true, nil
	}
	if !isCode(err, "BucketAlreadyOwnedByYou") {
		return false, fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	owner, _, err := d.bucketOwner(ctx, bucket)
	if err != nil {
		return false, err
	}
	if owner != "" && owner != resource {
		return false, fmt.Errorf("create bucket %s: it belongs to resource %s; choose another bucket_name", bucket, owner)
	}
	return false, nil
}

// configureBucket tags the bucket and applies the versioning parameter.
func (d *Driver) configureBucket(ctx context.Context, bucket string, inst resources.Instance) error {
	_, err := d.admin.PutBucketTagging(ctx, &s3.PutBucketTaggingInput{
		Bucket:  aws.String(bucket),
		Tagging: &types.Tagging{TagSet: []types.Tag{{Key: aws.String(ownerTag), Value: aws.String(inst.Name)}}},
	})
	if err != nil {
		return fmt.Errorf("tag bucket %s: %w", bucket, err)
	}
	if v, _ := inst.Params["versioning"].(bool); v {
		_, err := d.admin.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{
			Bucket:                  aws.String(bucket),
			VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled},
		})
		if err != nil {
			return fmt.Errorf("enable versioning on bucket %s: %w", bucket, err)
		}
	}
	return nil
}

// bucketOwner returns the resource the bucket is tagged with ("" when
// untagged) and whether the bucket exists.
func (d *Driver) bucketOwner(ctx context.Context, bucket string) (owner string, exists bool, err error) {
	out, err := d.admin.GetBucketTagging(ctx, &s3.GetBucketTaggingInput{Bucket: aws.String(bucket)})
	switch {
	case isCode(err, "NoSuchBucket"):
		return "", false, nil
	case isCode(err, "NoSuchTagSet"):
		return "", true, nil
	case err != nil:
		return "", false, fmt.Errorf("read tags of bucket %s: %w", bucket, err)
	}
	for _, t := range out.TagSet {
		if aws.ToString(t.Key) == ownerTag {
			return aws.ToString(t.Value), true, nil
		}
	}
	return "", true, nil
}

// deleteBucket deletes an empty bucket; a missing one is fine.
func (d *Driver) deleteBucket(ctx context.Context, bucket string) error {
	_, err := d.admin.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(bucket)})
	if err != nil && !isCode(err, "NoSuchBucket") {
		return fmt.Errorf("delete bucket %s: %w", bucket, err)
	}
	return nil
}

// emptyBucket aborts pending multipart uploads and deletes every object
// version and delete marker (for an unversioned bucket: every object).
func (d *Driver) emptyBucket(ctx context.Context, bucket string) error {
	if err := d.abortUploads(ctx, bucket); err != nil {
		return err
	}
	p := s3.NewListObjectVersionsPaginator(d.admin, &s3.ListObjectVersionsInput{Bucket: aws.String(bucket)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list objects of bucket %s: %w", bucket, err)
		}
		var ids []types.ObjectIdentifier
		for _, v := range page.Versions {
			ids = append(ids, types.ObjectIdentifier{Key: v.Key, VersionId: v.VersionId})
		}
		for _, m := range page.DeleteMarkers {
			ids = append(ids, types.ObjectIdentifier{Key: m.Key, VersionId: m.VersionId})
		}
		if err := d.deleteObjects(ctx, bucket, ids); err != nil {
			return err
		}
	}
	return nil
}

// deleteObjects deletes up to 1000 objects (one ListObjectVersions page).
func (d *Driver) deleteObjects(ctx context.Context, bucket string, ids []types.ObjectIdentifier) error {
	if len(ids) == 0 {
		return nil
	}
	out, err := d.admin.DeleteObjects(ctx, &s3.DeleteObjectsInput{
		Bucket: aws.String(bucket),
		Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
	})
	if err != nil {
		return fmt.Errorf("delete objects of bucket %s: %w", bucket, err)
	}
	if len(out.Errors) > 0 {
		e := out.Errors[0]
		return fmt.Errorf("delete objects of bucket %s: %s: %s %s (and %d more)", bucket,
			aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message), len(out.Errors)-1)
	}
	return nil
}

func (d *Driver) abortUploads(ctx context.Context, bucket string) error {
	in := &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)}
	for {
		out, err := d.admin.ListMultipartUploads(ctx, in)
		if err != nil {
			return fmt.Errorf("list uploads of bucket %s: %w", bucket, err)
		}
		for _, u := range out.Uploads {
			_, err := d.admin.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
				Bucket: aws.String(bucket), Key: u.Key, UploadId: u.UploadId,
			})
			if err != nil && !isCode(err, "NoSuchUpload") {
				return fmt.Errorf("abort upload of %s in bucket %s: %w", aws.ToString(u.Key), bucket, err)
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// updatePolicy rewrites the bucket policy with change; a policy left with
// no statements is deleted. Callers hold policyMu.
func (d *Driver) updatePolicy(ctx context.Context, bucket string, change func(policy) (policy, error)) error {
	var doc string
	out, err := d.admin.GetBucketPolicy(ctx, &s3.GetBucketPolicyInput{Bucket: aws.String(bucket)})
	switch {
	case err == nil:
		doc = aws.ToString(out.Policy)
	case !isCode(err, "NoSuchBucketPolicy"):
		return fmt.Errorf("read policy of bucket %s: %w", bucket, err)
	}
	cur, err := parsePolicy(doc)
	if err != nil {
		return err
	}
	next, err := change(cur)
	if err != nil {
		return err
	}
	if len(next.Statement) == 0 {
		if doc == "" {
			return nil
		}
		if _, err := d.admin.DeleteBucketPolicy(ctx, &s3.DeleteBucketPolicyInput{Bucket: aws.String(bucket)}); err != nil {
			return fmt.Errorf("delete policy of bucket %s: %w", bucket, err)
		}
		return nil
	}
	b, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("encode policy of bucket %s: %w", bucket, err)
	}
	if _, err := d.admin.PutBucketPolicy(ctx, &s3.PutBucketPolicyInput{Bucket: aws.String(bucket), Policy: aws.String(string(b))}); err != nil {
		return fmt.Errorf("write policy of bucket %s: %w", bucket, err)
	}
	return nil
}
